//! Reading a module's `.modinfo` ELF section and deciding whether it fits the kernel.

use object::{Object, ObjectSection};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModinfoError {
    #[error("not a valid ELF object: {0}")]
    Elf(String),
    #[error("ELF object has no .modinfo section (not a kernel module)")]
    NoModinfo,
    #[error(".modinfo section cannot be read: {0}")]
    Section(String),
    #[error("cannot decompress {kind} module: {reason}")]
    Decompress { kind: &'static str, reason: String },
}

/// How a module file is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Zstd,
    Gzip,
}

impl Compression {
    /// From the first bytes of a file.
    pub fn detect(magic: &[u8]) -> Self {
        match magic {
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Self::Xz,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Self::Zstd,
            [0x1f, 0x8b, ..] => Self::Gzip,
            _ => Self::None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "uncompressed",
            Self::Xz => "xz",
            Self::Zstd => "zstd",
            Self::Gzip => "gzip",
        }
    }
}

/// Decompresses a whole module image (`.ko.xz`, `.ko.zst`, `.ko.gz`) in memory.
pub fn decompress(kind: Compression, data: &[u8]) -> Result<Vec<u8>, ModinfoError> {
    use std::io::Read;
    let err = |reason: String| ModinfoError::Decompress {
        kind: kind.name(),
        reason,
    };
    let mut out = Vec::with_capacity(data.len() * 3);
    match kind {
        Compression::None => out.extend_from_slice(data),
        Compression::Xz => lzma_rs::xz_decompress(&mut std::io::BufReader::new(data), &mut out)
            .map_err(|e| err(e.to_string()))?,
        Compression::Zstd => {
            ruzstd::decoding::StreamingDecoder::new(data)
                .map_err(|e| err(e.to_string()))?
                .read_to_end(&mut out)
                .map_err(|e| err(e.to_string()))?;
        }
        Compression::Gzip => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .map_err(|e| err(e.to_string()))?;
        }
    }
    Ok(out)
}

/// Key/value pairs of `.modinfo`, in section order (keys may repeat, e.g. `alias`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    pub entries: Vec<(String, String)>,
    /// ELF machine of the object, e.g. `X86_64`.
    pub architecture: String,
    /// GNU build id (hex), when the object has one.
    pub build_id: Option<String>,
}

impl ModInfo {
    /// Parses the bytes of an (uncompressed) `.ko` file.
    pub fn from_elf(bytes: &[u8]) -> Result<Self, ModinfoError> {
        Self::parse(bytes)
    }

    /// Reads a module file. An uncompressed `.ko` is read in place (only its headers,
    /// `.modinfo` and build-id note); a compressed one is decompressed and its image is
    /// returned too, for `init_module`.
    pub fn from_file(file: &std::fs::File) -> Result<(Self, Option<Vec<u8>>), ModinfoError> {
        use std::io::{Read, Seek};
        let io = |e: std::io::Error| ModinfoError::Elf(e.to_string());
        let mut magic = [0u8; 6];
        let mut reader = file;
        let n = reader.read(&mut magic).map_err(io)?;
        match Compression::detect(&magic[..n]) {
            Compression::None => {
                let cache = object::ReadCache::new(file);
                Ok((Self::parse(&cache)?, None))
            }
            kind => {
                let mut raw = Vec::new();
                reader.rewind().map_err(io)?;
                reader.read_to_end(&mut raw).map_err(io)?;
                let image = decompress(kind, &raw)?;
                Ok((Self::parse(image.as_slice())?, Some(image)))
            }
        }
    }

    fn parse<'data, R: object::ReadRef<'data>>(data: R) -> Result<Self, ModinfoError> {
        let file = object::File::parse(data).map_err(|e| ModinfoError::Elf(e.to_string()))?;
        let section = file
            .section_by_name(".modinfo")
            .ok_or(ModinfoError::NoModinfo)?;
        let data = section
            .data()
            .map_err(|e| ModinfoError::Section(e.to_string()))?;
        Ok(Self {
            entries: parse_modinfo(data),
            architecture: format!("{:?}", file.architecture()),
            build_id: file.build_id().ok().flatten().map(crate::state::hex),
        })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    pub fn vermagic(&self) -> Option<&str> {
        self.get("vermagic")
    }
    pub fn name(&self) -> Option<&str> {
        self.get("name")
    }
    pub fn srcversion(&self) -> Option<&str> {
        self.get("srcversion")
    }
    /// Modules this one needs (`depends=a,b`).
    pub fn depends(&self) -> Vec<&str> {
        self.get("depends")
            .map(|d| d.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    }
}

/// Splits a `.modinfo` section: NUL-separated `key=value` strings, with NUL padding.
pub fn parse_modinfo(data: &[u8]) -> Vec<(String, String)> {
    data.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Why a module does not fit the running kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FitError {
    #[error("module has no vermagic in .modinfo")]
    NoVermagic,
    #[error(
        "vermagic {vermagic:?} is for kernel {built_for:?}, but the running kernel is {running:?}"
    )]
    WrongKernel {
        vermagic: String,
        built_for: String,
        running: String,
    },
    #[error("module is for architecture {module}, this machine is {host}")]
    WrongArch { module: String, host: String },
    #[error("file declares module name {declared:?}, expected {expected:?}")]
    WrongName { declared: String, expected: String },
}

/// The ELF machine name `object` reports for the architecture this binary runs on.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "X86_64",
        "aarch64" => "Aarch64",
        "powerpc64" => "PowerPc64",
        "s390x" => "S390x",
        "riscv64" => "Riscv64",
        other => other,
    }
}

/// Pure check of a module's metadata against the running kernel. The kernel itself
/// compares the whole vermagic string; its first word is the release it was built for.
pub fn check_fit(
    info: &ModInfo,
    expected_name: &str,
    running_release: &str,
    host_arch: &str,
) -> Result<(), FitError> {
    if info.architecture != host_arch {
        return Err(FitError::WrongArch {
            module: info.architecture.clone(),
            host: host_arch.to_owned(),
        });
    }
    let vermagic = info.vermagic().ok_or(FitError::NoVermagic)?;
    let built_for = vermagic.split_whitespace().next().unwrap_or_default();
    if built_for != running_release {
        return Err(FitError::WrongKernel {
            vermagic: vermagic.to_owned(),
            built_for: built_for.to_owned(),
            running: running_release.to_owned(),
        });
    }
    if let Some(declared) = info.name()
        && crate::depmod::normalize(declared) != crate::depmod::normalize(expected_name)
    {
        return Err(FitError::WrongName {
            declared: declared.to_owned(),
            expected: expected_name.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(vermagic: &str) -> ModInfo {
        ModInfo {
            entries: vec![
                ("name".into(), "kafs".into()),
                ("vermagic".into(), vermagic.into()),
            ],
            architecture: "X86_64".into(),
            build_id: None,
        }
    }

    #[test]
    fn parse_section() {
        let data = b"license=GPL\0depends=rxrpc,netfs\0\0\0srcversion=ABC\0vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions \0name=kafs\0";
        let i = ModInfo {
            entries: parse_modinfo(data),
            architecture: "X86_64".into(),
            build_id: None,
        };
        assert_eq!(i.depends(), vec!["rxrpc", "netfs"]);
        assert_eq!(i.srcversion(), Some("ABC"));
        assert_eq!(i.name(), Some("kafs"));
        assert!(check_fit(&i, "kafs", "6.1.0-56-amd64", "X86_64").is_ok());
    }

    #[test]
    fn fit_rules() {
        let i = info("6.1.0-99-amd64 SMP preempt mod_unload modversions ");
        let e = check_fit(&i, "kafs", "6.1.0-56-amd64", "X86_64").expect_err("wrong kernel");
        assert!(e.to_string().contains("\"6.1.0-99-amd64\""), "{e}");
        assert_eq!(
            check_fit(&i, "kafs", "6.1.0-99-amd64", "Aarch64"),
            Err(FitError::WrongArch {
                module: "X86_64".into(),
                host: "Aarch64".into()
            })
        );
        assert!(matches!(
            check_fit(&info("6.1.0-99-amd64"), "rxrpc", "6.1.0-99-amd64", "X86_64"),
            Err(FitError::WrongName { .. })
        ));
        let none = ModInfo {
            entries: vec![],
            architecture: "X86_64".into(),
            build_id: None,
        };
        assert_eq!(
            check_fit(&none, "kafs", "6.1.0", "X86_64"),
            Err(FitError::NoVermagic)
        );
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(
            ModInfo::from_elf(b"not an elf at all"),
            Err(ModinfoError::Elf(_))
        ));
        assert!(matches!(
            ModInfo::from_elf(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2]),
            Err(ModinfoError::Elf(_))
        ));
        // A real ELF without .modinfo: this test binary itself.
        let me = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
        assert_eq!(ModInfo::from_elf(&me), Err(ModinfoError::NoModinfo));
        // Truncated ELF.
        assert!(ModInfo::from_elf(&me[..200]).is_err());
        // Reading through a file gives the same answers.
        let f = std::fs::File::open(std::env::current_exe().expect("exe")).expect("open");
        assert_eq!(ModInfo::from_file(&f), Err(ModinfoError::NoModinfo));
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("t.ko");
        std::fs::write(&p, &me[..200]).expect("write");
        assert!(ModInfo::from_file(&std::fs::File::open(&p).expect("open")).is_err());
        // A corrupt compressed stream is a decompression error naming the format.
        std::fs::write(&p, [0x28, 0xb5, 0x2f, 0xfd, 0, 0]).expect("write");
        assert!(matches!(
            ModInfo::from_file(&std::fs::File::open(&p).expect("open")),
            Err(ModinfoError::Decompress { kind: "zstd", .. })
        ));
    }

    #[test]
    fn compressed_modules_round_trip() {
        use std::io::Write;
        // An ELF object with a .modinfo section, built in memory.
        let mut obj = object::write::Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        let sec = obj.add_section(
            Vec::new(),
            b".modinfo".to_vec(),
            object::SectionKind::ReadOnlyData,
        );
        obj.append_section_data(sec, b"name=kafs\0vermagic=6.1.0-56-amd64 SMP \0", 1);
        let elf = obj.write().expect("elf");
        let dir = tempfile::tempdir().expect("tempdir");
        let xz = {
            let mut out = Vec::new();
            lzma_rs::xz_compress(&mut std::io::BufReader::new(elf.as_slice()), &mut out)
                .expect("xz");
            out
        };
        let zst = ruzstd::encoding::compress_to_vec(
            elf.as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&elf).expect("gz");
            e.finish().expect("gz")
        };
        for (name, bytes) in [("plain", &elf), ("xz", &xz), ("zst", &zst), ("gz", &gz)] {
            let p = dir.path().join(format!("kafs.ko.{name}"));
            std::fs::write(&p, bytes).expect("write");
            let (info, image) =
                ModInfo::from_file(&std::fs::File::open(&p).expect("open")).expect(name);
            assert_eq!(info.name(), Some("kafs"), "{name}");
            assert!(
                check_fit(&info, "kafs", "6.1.0-56-amd64", "X86_64").is_ok(),
                "{name}"
            );
            match name {
                "plain" => assert!(image.is_none()),
                _ => assert_eq!(image.as_deref(), Some(elf.as_slice()), "{name}"),
            }
        }
    }
}
