//! What the client of a node is made of, decided from its settings and configuration
//! files (pure): the cells, the lines kAFS is given, afsd's command line, the cells the
//! AFS root must list, and whether an observed AFS root is healthy.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use super::celldb::{self, Cell, CellDbError};
use crate::config::{AfsdSettings, CacheManagerKind, ClientSettings};

/// Options kmod-manager sets itself; given again they would contradict its settings or
/// its teardown (`-shutdown`), or mount the AFS root in the container's own namespace
/// where no pod sees it.
pub const RESERVED_AFSD_OPTIONS: &[&str] = &[
    "-mountdir",
    "-cachedir",
    "-blocks",
    "-confdir",
    "-memcache",
    "-nomount",
    "-shutdown",
];

/// The configuration files, as read from `configDir` (and `cellDatabaseDir`).
#[derive(Debug, Clone, Default)]
pub struct ConfigFiles {
    /// `CellServDB` (kafs, openafs).
    pub cellservdb: Option<String>,
    /// `ThisCell` (kafs, openafs).
    pub thiscell: Option<String>,
    /// `yfs-client.conf` (auristor).
    pub client_conf: Option<String>,
    /// `cellservdb.conf` (auristor, optional).
    pub cell_database: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("client.{field} {value:?} must be an absolute path without '..'")]
    Path { field: &'static str, value: PathBuf },
    #[error("client.configDir {dir}: {file} is missing (the {manager} client needs {needs} there)")]
    Missing {
        dir: PathBuf,
        file: &'static str,
        manager: &'static str,
        needs: &'static str,
    },
    #[error("client.configDir: {0}")]
    CellDb(#[from] CellDbError),
    #[error("client.configDir {dir}: ThisCell names {cell}, which CellServDB does not list")]
    ThisCellUnknown { dir: PathBuf, cell: String },
    #[error("client.configDir {dir}: yfs-client.conf sets no thiscell in [defaults]")]
    NoThisCell { dir: PathBuf },
    #[error(
        "client.afsd.options[{index}] {value}: kmod-manager sets it itself from the client settings"
    )]
    ReservedOption { index: usize, value: String },
    #[error(
        "client.afsd.options[{index}] {value:?} must be one word of letters, digits and ._/:=-"
    )]
    BadOption { index: usize, value: String },
    #[error("client.afsd.cacheBlocks must be at least 1")]
    NoCache,
}

/// The client of a node, decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPlan {
    pub kind: CacheManagerKind,
    pub afs_root: PathBuf,
    pub this_cell: String,
    /// The cell database (kafs, openafs); empty for auristor, whose afsd reads it.
    pub cells: Vec<Cell>,
    /// Cells the AFS root must list for the client to count as up.
    pub expected_cells: Vec<String>,
    /// afsd's path and arguments (openafs, auristor).
    pub afsd: Option<(PathBuf, Vec<OsString>)>,
    /// The configuration directory kmod-manager writes for afsd before it runs (openafs).
    pub afsd_conf: Option<AfsdConf>,
}

/// OpenAFS's afsd reads `cacheinfo` from its `-confdir` before any option, and stops
/// without it. The map holds the cell database alone (and is read-only), so afsd gets a
/// directory of kmod-manager's own, in its state directory: the map's files as read,
/// and a `cacheinfo` from the client settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfsdConf {
    pub dir: PathBuf,
    pub files: Vec<(&'static str, String)>,
}

/// The directory below the state directory that holds afsd's configuration.
pub const AFSD_CONF_DIR: &str = "openafs-conf";

impl CacheManagerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auristor => "auristor",
            Self::Openafs => "openafs",
            Self::Kafs => "kafs",
        }
    }

    /// The files the client reads from `configDir`, for messages.
    pub fn needs(self) -> &'static str {
        match self {
            Self::Auristor => "yfs-client.conf",
            Self::Openafs | Self::Kafs => "CellServDB and ThisCell",
        }
    }
}

fn check_path(field: &'static str, p: &Path) -> Result<(), PlanError> {
    if p.is_absolute() && !p.components().any(|c| c == Component::ParentDir) {
        Ok(())
    } else {
        Err(PlanError::Path {
            field,
            value: p.to_owned(),
        })
    }
}

/// Decides the client from its settings and files; `state_dir` is kmod-manager's own
/// writable directory.
pub fn plan(
    settings: &ClientSettings,
    files: &ConfigFiles,
    state_dir: &Path,
) -> Result<ClientPlan, PlanError> {
    check_path("afsRoot", &settings.afs_root)?;
    check_path("configDir", &settings.config_dir)?;
    if let Some(d) = &settings.cell_database_dir {
        check_path("cellDatabaseDir", d)?;
    }
    let kind = settings.cache_manager;
    let missing = |file| PlanError::Missing {
        dir: settings.config_dir.clone(),
        file,
        manager: kind.as_str(),
        needs: kind.needs(),
    };
    let (this_cell, cells, mut expected) = match kind {
        CacheManagerKind::Kafs | CacheManagerKind::Openafs => {
            let db = files
                .cellservdb
                .as_deref()
                .ok_or_else(|| missing("CellServDB"))?;
            let this = files
                .thiscell
                .as_deref()
                .ok_or_else(|| missing("ThisCell"))?;
            let cells = celldb::parse_cellservdb("CellServDB", db)?;
            let this = celldb::parse_thiscell("ThisCell", this)?;
            if !cells.iter().any(|c| c.name == this) {
                return Err(PlanError::ThisCellUnknown {
                    dir: settings.config_dir.clone(),
                    cell: this,
                });
            }
            let lists_all = kind == CacheManagerKind::Kafs
                || settings
                    .afsd
                    .as_ref()
                    .is_some_and(|a| a.options.iter().any(|o| o == "-dynroot"));
            let expected = if lists_all {
                cells.iter().map(|c| c.name.clone()).collect()
            } else {
                vec![this.clone()]
            };
            (this, cells, expected)
        }
        CacheManagerKind::Auristor => {
            let conf = files
                .client_conf
                .as_deref()
                .ok_or_else(|| missing("yfs-client.conf"))?;
            let profile = celldb::parse_profile("yfs-client.conf", conf)?;
            if let Some(db) = files.cell_database.as_deref() {
                celldb::parse_profile("cellservdb.conf", db)?;
            }
            let this = profile.this_cell.ok_or_else(|| PlanError::NoThisCell {
                dir: settings.config_dir.clone(),
            })?;
            (this.clone(), Vec::new(), vec![this])
        }
    };
    expected.sort();
    expected.dedup();
    let afsd_settings = settings.afsd.clone().unwrap_or_default();
    let afsd_conf = match (kind, &files.cellservdb, &files.thiscell) {
        (CacheManagerKind::Openafs, Some(db), Some(this)) => {
            let dir = state_dir.join(AFSD_CONF_DIR);
            let cacheinfo = cacheinfo_line(settings, &afsd_settings, &dir);
            Some(AfsdConf {
                files: vec![
                    ("CellServDB", db.clone()),
                    ("ThisCell", this.clone()),
                    ("cacheinfo", cacheinfo),
                ],
                dir,
            })
        }
        _ => None,
    };
    let afsd = match kind {
        CacheManagerKind::Kafs => None,
        _ => {
            let conf_dir = afsd_conf.as_ref().map_or(&settings.config_dir, |c| &c.dir);
            Some(afsd_command(settings, &afsd_settings, conf_dir)?)
        }
    };
    Ok(ClientPlan {
        kind,
        afs_root: settings.afs_root.clone(),
        this_cell,
        cells,
        expected_cells: expected,
        afsd,
        afsd_conf,
    })
}

/// afsd's command line: the settings kmod-manager owns, then the site's options.
/// `-nomount`: afsd runs in the container's mount namespace; kmod-manager mounts the
/// AFS root in the host's itself.
fn afsd_command(
    settings: &ClientSettings,
    afsd: &AfsdSettings,
    conf_dir: &Path,
) -> Result<(PathBuf, Vec<OsString>), PlanError> {
    check_path("afsd.path", &afsd.path)?;
    if afsd.cache_blocks == 0 {
        return Err(PlanError::NoCache);
    }
    let mut args: Vec<OsString> = vec![
        "-confdir".into(),
        conf_dir.into(),
        "-mountdir".into(),
        settings.afs_root.clone().into(),
        "-nomount".into(),
        "-blocks".into(),
        afsd.cache_blocks.to_string().into(),
    ];
    match &afsd.cache_dir {
        Some(dir) => {
            check_path("afsd.cacheDir", dir)?;
            args.extend(["-cachedir".into(), dir.clone().into()]);
        }
        None => args.push("-memcache".into()),
    }
    for (index, o) in afsd.options.iter().enumerate() {
        if RESERVED_AFSD_OPTIONS.contains(&o.as_str()) {
            return Err(PlanError::ReservedOption {
                index,
                value: o.clone(),
            });
        }
        let word = !o.is_empty()
            && o.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._/:=-".contains(&b));
        if !word {
            return Err(PlanError::BadOption {
                index,
                value: o.clone(),
            });
        }
        args.push(o.into());
    }
    Ok((afsd.path.clone(), args))
}

/// `cacheinfo`: `<AFS root>:<cache directory>:<blocks>`. afsd's options say the same and
/// win; a memory cache has no directory, and the line names the configuration's own.
fn cacheinfo_line(settings: &ClientSettings, afsd: &AfsdSettings, conf_dir: &Path) -> String {
    let cache = afsd.cache_dir.as_deref().unwrap_or(conf_dir);
    format!(
        "{}:{}:{}\n",
        settings.afs_root.display(),
        cache.display(),
        afsd.cache_blocks
    )
}

/// The line that gives kAFS a cell: `add <cell> <addr>:<addr>` (IPv6 in brackets), or
/// `add <cell>` to have it look the servers up in the DNS.
pub fn kafs_add_line(cell: &Cell) -> String {
    let addrs: Vec<String> = cell
        .servers
        .iter()
        .map(|a| match a {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        })
        .collect();
    if addrs.is_empty() {
        format!("add {}", cell.name)
    } else {
        format!("add {} {}", cell.name, addrs.join(":"))
    }
}

/// What was seen at the AFS root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootObservation {
    /// Filesystem type of the top mount at the AFS root in the host's namespace.
    pub fs_type: Option<String>,
    /// The AFS root's entries, or why they could not be read.
    pub listing: Result<Vec<String>, String>,
}

/// Whether the AFS root serves the client (pure): `Err` names what is wrong.
pub fn root_health(
    plan: &ClientPlan,
    fs_types: &[String],
    seen: &RootObservation,
) -> Result<(), String> {
    let root = plan.afs_root.display();
    match &seen.fs_type {
        None => return Err(format!("the AFS root {root} is not mounted")),
        Some(t) if !fs_types.contains(t) => {
            return Err(format!("the AFS root {root} is a {t} mount, not AFS"));
        }
        Some(_) => {}
    }
    let listing = seen
        .listing
        .as_ref()
        .map_err(|e| format!("the AFS root {root} cannot be listed: {e}"))?;
    let missing: Vec<&str> = plan
        .expected_cells
        .iter()
        .filter(|c| !listing.contains(c))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the AFS root {root} does not list the configured cells {}",
            missing.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "/run/kmod-manager";
    const DB: &str = ">test.afs #t\n127.1.0.1 #afs1\n>other.org #o\n10.0.0.1 #a\n[fd00::1] #b\n";

    fn settings(kind: CacheManagerKind) -> ClientSettings {
        ClientSettings {
            cache_manager: kind,
            afs_root: "/afs".into(),
            config_dir: "/etc/openafs".into(),
            cell_database_dir: None,
            afsd: None,
        }
    }

    fn openafs_files() -> ConfigFiles {
        ConfigFiles {
            cellservdb: Some(DB.into()),
            thiscell: Some("test.afs\n".into()),
            ..ConfigFiles::default()
        }
    }

    #[test]
    fn kafs_gets_every_cell_and_no_daemon() {
        let p = plan(
            &settings(CacheManagerKind::Kafs),
            &openafs_files(),
            Path::new(STATE),
        )
        .expect("plan");
        assert_eq!(p.this_cell, "test.afs");
        assert_eq!(p.expected_cells, vec!["other.org", "test.afs"]);
        assert_eq!(p.afsd, None);
        assert_eq!(kafs_add_line(&p.cells[0]), "add test.afs 127.1.0.1");
        assert_eq!(
            kafs_add_line(&p.cells[1]),
            "add other.org 10.0.0.1:[fd00::1]"
        );
        let dns = Cell {
            name: "dns.example".into(),
            servers: vec![],
        };
        assert_eq!(kafs_add_line(&dns), "add dns.example");
    }

    #[test]
    fn openafs_afsd_command_line() {
        let mut s = settings(CacheManagerKind::Openafs);
        s.afsd = Some(AfsdSettings {
            cache_dir: None,
            cache_blocks: 20000,
            options: vec!["-dynroot".into(), "-stat".into(), "2000".into()],
            ..AfsdSettings::default()
        });
        let p = plan(&s, &openafs_files(), Path::new(STATE)).expect("plan");
        let (path, args) = p.afsd.clone().expect("afsd");
        assert_eq!(path, PathBuf::from("/usr/sbin/afsd"));
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "-confdir /run/kmod-manager/openafs-conf -mountdir /afs -nomount -blocks 20000 -memcache -dynroot -stat 2000"
        );
        // The map has no cacheinfo and afsd stops without one: kmod-manager writes it.
        let conf = p.afsd_conf.clone().expect("afsd's configuration");
        assert_eq!(conf.dir, PathBuf::from("/run/kmod-manager/openafs-conf"));
        assert_eq!(
            conf.files,
            vec![
                ("CellServDB", DB.to_owned()),
                ("ThisCell", "test.afs\n".to_owned()),
                (
                    "cacheinfo",
                    "/afs:/run/kmod-manager/openafs-conf:20000\n".to_owned()
                ),
            ]
        );
        assert_eq!(
            p.expected_cells,
            vec!["other.org", "test.afs"],
            "-dynroot lists every cell"
        );

        s.afsd = Some(AfsdSettings {
            cache_dir: Some("/var/cache/openafs".into()),
            ..AfsdSettings::default()
        });
        let p = plan(&s, &openafs_files(), Path::new(STATE)).expect("plan");
        let args = p.afsd.expect("afsd").1;
        assert!(
            args.windows(2)
                .any(|w| w[0] == "-cachedir" && w[1] == "/var/cache/openafs")
        );
        assert!(!args.iter().any(|a| a == "-memcache"));
        assert_eq!(
            p.afsd_conf.expect("conf").files[2],
            ("cacheinfo", "/afs:/var/cache/openafs:100000\n".to_owned())
        );
        assert_eq!(
            p.expected_cells,
            vec!["test.afs"],
            "without -dynroot only this cell"
        );
    }

    #[test]
    fn refusals_name_the_field_and_the_rule() {
        let mut s = settings(CacheManagerKind::Openafs);
        s.afsd = Some(AfsdSettings {
            options: vec!["-fakestat".into(), "-nomount".into()],
            ..AfsdSettings::default()
        });
        let e = plan(&s, &openafs_files(), Path::new(STATE)).expect_err("reserved");
        assert_eq!(
            e.to_string(),
            "client.afsd.options[1] -nomount: kmod-manager sets it itself from the client settings"
        );
        s.afsd = Some(AfsdSettings {
            options: vec!["-x;reboot".into()],
            ..AfsdSettings::default()
        });
        assert!(matches!(
            plan(&s, &openafs_files(), Path::new(STATE)),
            Err(PlanError::BadOption { index: 0, .. })
        ));
        s.afsd = Some(AfsdSettings {
            cache_blocks: 0,
            ..AfsdSettings::default()
        });
        assert_eq!(
            plan(&s, &openafs_files(), Path::new(STATE)),
            Err(PlanError::NoCache)
        );

        let e = plan(
            &settings(CacheManagerKind::Kafs),
            &ConfigFiles::default(),
            Path::new(STATE),
        )
        .expect_err("none");
        assert_eq!(
            e.to_string(),
            "client.configDir /etc/openafs: CellServDB is missing (the kafs client needs CellServDB and ThisCell there)"
        );
        let files = ConfigFiles {
            thiscell: Some("nowhere.org".into()),
            ..openafs_files()
        };
        let e =
            plan(&settings(CacheManagerKind::Kafs), &files, Path::new(STATE)).expect_err("unknown");
        assert!(e.to_string().contains("ThisCell names nowhere.org"), "{e}");
        let mut s = settings(CacheManagerKind::Kafs);
        s.afs_root = "/afs/../etc".into();
        assert!(matches!(
            plan(&s, &openafs_files(), Path::new(STATE)),
            Err(PlanError::Path {
                field: "afsRoot",
                ..
            })
        ));
    }

    #[test]
    fn auristor_reads_its_profile() {
        let mut s = settings(CacheManagerKind::Auristor);
        s.config_dir = "/etc/yfs".into();
        let files = ConfigFiles {
            client_conf: Some("[defaults]\n thiscell = example.com\n".into()),
            cell_database: Some("[cells]\n example.com = {\n }\n".into()),
            ..ConfigFiles::default()
        };
        let p = plan(&s, &files, Path::new(STATE)).expect("plan");
        assert_eq!(p.this_cell, "example.com");
        assert_eq!(p.expected_cells, vec!["example.com"]);
        let (_, args) = p.afsd.expect("afsd");
        assert_eq!(args[..2], ["-confdir".into(), OsString::from("/etc/yfs")]);
        assert_eq!(
            p.afsd_conf, None,
            "AuriStorFS's afsd reads its profile in place"
        );
        let e = plan(&s, &ConfigFiles::default(), Path::new(STATE)).expect_err("missing");
        assert!(
            e.to_string().contains(
                "yfs-client.conf is missing (the auristor client needs yfs-client.conf there)"
            ),
            "{e}"
        );
        let files = ConfigFiles {
            client_conf: Some("[defaults]\n".into()),
            ..ConfigFiles::default()
        };
        assert!(matches!(
            plan(&s, &files, Path::new(STATE)),
            Err(PlanError::NoThisCell { .. })
        ));
    }

    #[test]
    fn health_names_what_is_wrong() {
        let p = plan(
            &settings(CacheManagerKind::Kafs),
            &openafs_files(),
            Path::new(STATE),
        )
        .expect("plan");
        let afs = vec!["afs".to_owned()];
        let seen = |fs: Option<&str>, listing: Result<Vec<&str>, &str>| RootObservation {
            fs_type: fs.map(str::to_owned),
            listing: listing
                .map(|l| l.into_iter().map(str::to_owned).collect())
                .map_err(str::to_owned),
        };
        assert_eq!(
            root_health(&p, &afs, &seen(None, Ok(vec![]))),
            Err("the AFS root /afs is not mounted".to_owned())
        );
        assert_eq!(
            root_health(&p, &afs, &seen(Some("tmpfs"), Ok(vec![]))),
            Err("the AFS root /afs is a tmpfs mount, not AFS".to_owned())
        );
        assert_eq!(
            root_health(
                &p,
                &afs,
                &seen(Some("afs"), Ok(vec!["test.afs", ".test.afs"]))
            ),
            Err("the AFS root /afs does not list the configured cells other.org".to_owned())
        );
        assert!(root_health(&p, &afs, &seen(Some("afs"), Err("EIO"))).is_err());
        assert_eq!(
            root_health(
                &p,
                &afs,
                &seen(Some("afs"), Ok(vec!["other.org", "test.afs"]))
            ),
            Ok(())
        );
    }
}
