//! The cell databases a client is configured from (pure parsing).
//!
//! - OpenAFS `CellServDB`: `>cell #comment` starts a cell, each following
//!   `address #hostname` (or `[address] #hostname` for a non-voting server) is one of its
//!   database servers.
//! - OpenAFS `ThisCell`: the cell name alone.
//! - AuriStorFS `yfs-client.conf` / `cellservdb.conf` (profile format): `thiscell` in
//!   `[defaults]`, and one `name = { ... }` block per cell in `[cells]`.

use std::net::IpAddr;

/// One cell and the addresses of its database servers (may be empty: the client then
/// finds them through DNS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub name: String,
    pub servers: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CellDbError {
    #[error("{file} line {line}: {reason}")]
    Line {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("{file} names no cell")]
    Empty { file: String },
}

/// A cell name as clients accept it: DNS-like labels of letters, digits, `-` and `_`
/// separated by single dots, at most 64 characters. Anything else would be written to
/// the kernel or used as a path component.
pub fn valid_cell_name(name: &str) -> bool {
    name.len() <= 64
        && !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Parses an OpenAFS `CellServDB`.
pub fn parse_cellservdb(file: &str, text: &str) -> Result<Vec<Cell>, CellDbError> {
    let err = |line: usize, reason: String| CellDbError::Line {
        file: file.to_owned(),
        line: line + 1,
        reason,
    };
    let mut cells: Vec<Cell> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('>') {
            let name = rest.split(['#', ' ', '\t']).next().unwrap_or("").trim();
            if !valid_cell_name(name) {
                return Err(err(n, format!("{name:?} is not a valid cell name")));
            }
            if cells.iter().any(|c| c.name == name) {
                return Err(err(n, format!("cell {name} is listed twice")));
            }
            cells.push(Cell {
                name: name.to_owned(),
                servers: Vec::new(),
            });
            continue;
        }
        let Some(cell) = cells.last_mut() else {
            return Err(err(n, "a server line before any >cell line".to_owned()));
        };
        let addr = line.split(['#', ' ', '\t']).next().unwrap_or("").trim();
        let addr = addr
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(addr);
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| err(n, format!("{addr:?} is not an IP address")))?;
        cell.servers.push(ip);
    }
    if cells.is_empty() {
        return Err(CellDbError::Empty {
            file: file.to_owned(),
        });
    }
    Ok(cells)
}

/// Parses an OpenAFS `ThisCell`.
pub fn parse_thiscell(file: &str, text: &str) -> Result<String, CellDbError> {
    let name = text.trim();
    if valid_cell_name(name) {
        Ok(name.to_owned())
    } else {
        Err(CellDbError::Line {
            file: file.to_owned(),
            line: 1,
            reason: format!("{name:?} is not a valid cell name"),
        })
    }
}

/// What an AuriStorFS profile file says: its `thiscell` and the cells it defines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub this_cell: Option<String>,
    pub cells: Vec<String>,
}

/// Parses the parts of an AuriStorFS profile (`yfs-client.conf`, `cellservdb.conf`)
/// a readiness check needs: `[defaults] thiscell`, and the cell names of `[cells]`.
pub fn parse_profile(file: &str, text: &str) -> Result<Profile, CellDbError> {
    let err = |line: usize, reason: String| CellDbError::Line {
        file: file.to_owned(),
        line: line + 1,
        reason,
    };
    let mut out = Profile::default();
    let mut section = String::new();
    let mut depth = 0usize;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split(['#', ';']).next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if depth == 0 && line.starts_with('[') {
            let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) else {
                return Err(err(n, format!("{line:?} is not a [section] header")));
            };
            section = name.trim().to_owned();
            continue;
        }
        if line == "}" {
            depth = depth
                .checked_sub(1)
                .ok_or_else(|| err(n, "'}' without an open block".to_owned()))?;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(err(n, format!("{line:?} is not `key = value`")));
        };
        let (key, value) = (key.trim(), value.trim());
        if value == "{" {
            if depth == 0 && section == "cells" {
                if !valid_cell_name(key) {
                    return Err(err(n, format!("{key:?} is not a valid cell name")));
                }
                out.cells.push(key.to_owned());
            }
            depth += 1;
        } else if depth == 0 && section == "defaults" && key == "thiscell" {
            if !valid_cell_name(value) {
                return Err(err(
                    n,
                    format!("thiscell {value:?} is not a valid cell name"),
                ));
            }
            out.this_cell = Some(value.to_owned());
        }
    }
    if depth != 0 {
        return Err(CellDbError::Line {
            file: file.to_owned(),
            line: text.lines().count(),
            reason: "a { block is not closed".to_owned(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cellservdb_cells_and_servers() {
        let db = ">test.afs #test cell\n127.1.0.1 #afs1.test.afs\n\n>grand.central.org  #GCO\n18.9.48.14   #grand.mit.edu\n[128.2.13.208] #penn.andrew\n>empty.example\n";
        let cells = parse_cellservdb("CellServDB", db).expect("parses");
        assert_eq!(cells.len(), 3);
        assert_eq!(cells[0].name, "test.afs");
        assert_eq!(
            cells[0].servers,
            vec!["127.1.0.1".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(cells[1].servers.len(), 2, "non-voting servers count too");
        assert!(cells[2].servers.is_empty());
    }

    #[test]
    fn cellservdb_errors_name_file_and_line() {
        let e = parse_cellservdb("CellServDB", ">a.b\nnot-an-ip #x\n").expect_err("bad");
        assert_eq!(
            e.to_string(),
            "CellServDB line 2: \"not-an-ip\" is not an IP address"
        );
        let e = parse_cellservdb("CellServDB", "10.0.0.1 #x\n").expect_err("orphan");
        assert!(
            e.to_string()
                .contains("line 1: a server line before any >cell"),
            "{e}"
        );
        let e = parse_cellservdb("CellServDB", ">bad/cell\n").expect_err("name");
        assert!(e.to_string().contains("not a valid cell name"), "{e}");
        let e = parse_cellservdb("CellServDB", ">a.b\n>a.b\n").expect_err("twice");
        assert!(e.to_string().contains("listed twice"), "{e}");
        assert_eq!(
            parse_cellservdb("CellServDB", "\n")
                .expect_err("empty")
                .to_string(),
            "CellServDB names no cell"
        );
    }

    #[test]
    fn thiscell_is_one_valid_name() {
        assert_eq!(
            parse_thiscell("ThisCell", "test.afs\n").expect("ok"),
            "test.afs"
        );
        assert!(parse_thiscell("ThisCell", "a b").is_err());
        assert!(parse_thiscell("ThisCell", "../etc").is_err());
    }

    #[test]
    fn profile_thiscell_and_cells() {
        let conf = "[defaults]\n    thiscell = example.com\n[cells]\n    example.com = {\n        description = \"x\"\n        servers = {\n            afsdb1.example.com = {\n                address = 192.0.2.11\n            }\n        }\n    }\n    other.org = {\n    }\n";
        let p = parse_profile("yfs-client.conf", conf).expect("parses");
        assert_eq!(p.this_cell.as_deref(), Some("example.com"));
        assert_eq!(
            p.cells,
            vec!["example.com", "other.org"],
            "server names are not cells"
        );
        let e = parse_profile("cellservdb.conf", "[cells]\n a.b = {\n").expect_err("open");
        assert!(e.to_string().contains("not closed"), "{e}");
    }

    #[test]
    fn the_example_maps_parse() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/maps");
        let conf = std::fs::read_to_string(root.join("yfs-client.conf")).expect("read");
        let db = std::fs::read_to_string(root.join("cellservdb.conf")).expect("read");
        assert_eq!(
            parse_profile("yfs-client.conf", &conf)
                .expect("conf")
                .this_cell
                .as_deref(),
            Some("example.com")
        );
        assert!(
            parse_profile("cellservdb.conf", &db)
                .expect("db")
                .cells
                .contains(&"example.com".to_owned())
        );
    }
}
