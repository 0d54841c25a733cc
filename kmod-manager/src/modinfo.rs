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
    #[error(
        "{kind} module decompresses to more than {} MiB ({limit} bytes), the limit for a module",
        limit / MIB
    )]
    TooLarge { kind: &'static str, limit: u64 },
}

const MIB: u64 = 1024 * 1024;

/// The largest module image accepted from a compressed file, and the largest compressed
/// file read. Real modules stay far below it (kafs is under 1 MiB; amdgpu.ko, the largest
/// module of Debian's 6.1 kernel, is about 19 MiB uncompressed), so anything bigger is a
/// decompression bomb: refused before the root daemon allocates more for it.
pub const MAX_DECOMPRESSED_MODULE: u64 = 64 * MIB;

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

/// Decompresses a whole module image (`.ko.xz`, `.ko.zst`, `.ko.gz`) in memory, refusing
/// with [`ModinfoError::TooLarge`] as soon as it would exceed `limit` bytes: the output
/// is streamed into a buffer that never grows past `limit`, and the sizes a header
/// declares (zstd window and content size, the xz chunk sizes) are checked first.
pub fn decompress(kind: Compression, data: &[u8], limit: u64) -> Result<Vec<u8>, ModinfoError> {
    let err = |reason: String| ModinfoError::Decompress {
        kind: kind.name(),
        reason,
    };
    let too_large = ModinfoError::TooLarge {
        kind: kind.name(),
        limit,
    };
    match kind {
        Compression::None => {
            if data.len() as u64 > limit {
                return Err(too_large);
            }
            Ok(data.to_vec())
        }
        Compression::Gzip => read_bounded(flate2::read::GzDecoder::new(data), kind, limit),
        Compression::Zstd => {
            let declared = zstd_declared(data).map_err(err)?;
            if declared.window > limit || declared.content_size.is_some_and(|n| n > limit) {
                return Err(too_large);
            }
            let decoder =
                ruzstd::decoding::StreamingDecoder::new(data).map_err(|e| err(e.to_string()))?;
            read_bounded(decoder, kind, limit)
        }
        Compression::Xz => {
            // lzma-rs keeps a whole xz block in memory before writing any of it, so the
            // output cannot be bounded while streaming: the chunk headers are summed
            // first, and the writer refuses anything beyond that sum.
            let declared = xz_declared_size(data).map_err(err)?;
            if declared > limit {
                return Err(too_large);
            }
            let mut out = BoundedWriter {
                out: Vec::with_capacity(usize::try_from(declared).unwrap_or(0)),
                limit: declared,
                exceeded: false,
            };
            let result = lzma_rs::xz_decompress(&mut std::io::BufReader::new(data), &mut out);
            if out.exceeded {
                return Err(too_large);
            }
            result.map_err(|e| err(e.to_string()))?;
            Ok(out.out)
        }
    }
}

/// Reads a decoder to its end into a buffer that grows geometrically but never past
/// `limit`; one byte more is [`ModinfoError::TooLarge`].
fn read_bounded(
    mut reader: impl std::io::Read,
    kind: Compression,
    limit: u64,
) -> Result<Vec<u8>, ModinfoError> {
    let limit_len = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(ModinfoError::Decompress {
                    kind: kind.name(),
                    reason: e.to_string(),
                });
            }
        };
        let len = out.len() + n;
        if len > limit_len {
            return Err(ModinfoError::TooLarge {
                kind: kind.name(),
                limit,
            });
        }
        if len > out.capacity() {
            let target = out.capacity().saturating_mul(2).max(len).min(limit_len);
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// A writer that takes at most `limit` bytes and then fails (and says so in `exceeded`).
struct BoundedWriter {
    out: Vec<u8>,
    limit: u64,
    exceeded: bool,
}

impl std::io::Write for BoundedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if (self.out.len() + buf.len()) as u64 > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other(
                "decompressed image exceeds its limit",
            ));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a zstd frame header declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZstdDeclared {
    /// Bytes the decoder keeps for back-references (it reserves them up front).
    pub window: u64,
    pub content_size: Option<u64>,
}

/// Reads the sizes of a zstd frame header (RFC 8878, 3.1.1.1), pure.
pub fn zstd_declared(data: &[u8]) -> Result<ZstdDeclared, String> {
    let short = || "truncated zstd frame header".to_owned();
    let descriptor = *data.get(4).ok_or_else(short)?;
    let single_segment = descriptor & 0x20 != 0;
    let mut pos = 5;
    let window_descriptor = if single_segment {
        None
    } else {
        pos += 1;
        Some(*data.get(5).ok_or_else(short)?)
    };
    pos += [0, 1, 2, 4][usize::from(descriptor & 0x03)];
    let fcs_len = match descriptor >> 6 {
        0 if single_segment => 1,
        0 => 0,
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let content_size = if fcs_len == 0 {
        None
    } else {
        let bytes = data.get(pos..pos + fcs_len).ok_or_else(short)?;
        let mut le = [0u8; 8];
        le[..fcs_len].copy_from_slice(bytes);
        let n = u64::from_le_bytes(le);
        Some(if fcs_len == 2 { n + 256 } else { n })
    };
    let window = match window_descriptor {
        Some(wd) => {
            let base = 1u64 << (10 + u32::from(wd >> 3));
            base + (base / 8) * u64::from(wd & 0x07)
        }
        // A single segment's window is the whole content.
        None => content_size.unwrap_or(0),
    };
    Ok(ZstdDeclared {
        window,
        content_size,
    })
}

/// The decompressed size an xz stream declares: the sum of the unpacked sizes of its
/// LZMA2 chunks, found by walking the block and chunk headers without decompressing
/// anything (pure). The decoder produces exactly that much for a stream made by an xz
/// encoder; the output writer refuses more in any case.
///
/// Known limit: lzma-rs 0.3 stops decoding an LZMA chunk once it has its declared size
/// and reads the next header right there, so a hand-made chunk whose data ends before
/// its declared packed size can hide further chunks from this walk, and lzma-rs buffers
/// a whole block before the writer sees it. Closing that needs a decoder that bounds
/// its own buffer.
pub fn xz_declared_size(data: &[u8]) -> Result<u64, String> {
    let truncated = || "truncated xz stream".to_owned();
    let byte = |pos: usize| data.get(pos).copied().ok_or_else(truncated);
    let be16 = |pos: usize| -> Result<u64, String> {
        Ok(u64::from(byte(pos)?) << 8 | u64::from(byte(pos + 1)?))
    };
    // Stream header: magic (6), flags (2), CRC32 (4).
    if data.get(..6) != Some(&[0xfd, b'7', b'z', b'X', b'Z', 0][..]) {
        return Err("not an xz stream".to_owned());
    }
    let check_type = byte(7)? & 0x0f;
    let check_size = match check_type {
        0 => 0,
        t => 4usize << ((t - 1) / 3),
    };
    let mut pos = 12;
    let mut total: u64 = 0;
    loop {
        let header = byte(pos)?;
        if header == 0 {
            // The index: no more blocks.
            return Ok(total);
        }
        pos += (usize::from(header) + 1) * 4;
        loop {
            let control = byte(pos)?;
            pos += 1;
            let unpacked = match control {
                0x00 => break,
                // Uncompressed chunk: its size, then its bytes.
                0x01 | 0x02 => {
                    let size = be16(pos)? + 1;
                    pos += 2 + usize::try_from(size).map_err(|e| e.to_string())?;
                    size
                }
                0x80..=0xff => {
                    let unpacked = (u64::from(control & 0x1f) << 16 | be16(pos)?) + 1;
                    let packed = be16(pos + 2)? + 1;
                    // Properties follow when they are reset (control >= 0xc0).
                    pos += 4 + usize::from(control >= 0xc0);
                    pos += usize::try_from(packed).map_err(|e| e.to_string())?;
                    unpacked
                }
                other => return Err(format!("invalid LZMA2 chunk control byte {other:#04x}")),
            };
            total = total
                .checked_add(unpacked)
                .ok_or_else(|| "xz sizes overflow".to_owned())?;
        }
        if pos > data.len() {
            return Err(truncated());
        }
        // Block padding to a multiple of four, then the block's check.
        pos = pos.next_multiple_of(4) + check_size;
    }
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
                // A compressed file larger than the limit cannot hold a module under it.
                let too_large = ModinfoError::TooLarge {
                    kind: kind.name(),
                    limit: MAX_DECOMPRESSED_MODULE,
                };
                if file.metadata().map_err(io)?.len() > MAX_DECOMPRESSED_MODULE {
                    return Err(too_large);
                }
                let mut raw = Vec::new();
                reader.rewind().map_err(io)?;
                // Bounded again while reading: the file may grow meanwhile.
                reader
                    .take(MAX_DECOMPRESSED_MODULE + 1)
                    .read_to_end(&mut raw)
                    .map_err(io)?;
                if raw.len() as u64 > MAX_DECOMPRESSED_MODULE {
                    return Err(too_large);
                }
                let image = decompress(kind, &raw, MAX_DECOMPRESSED_MODULE)?;
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

    /// (b) Every format is cut off at the limit: one byte over is refused, the limit
    /// itself is not.
    #[test]
    fn decompression_stops_at_the_limit() {
        use std::io::Write;
        let image = vec![7u8; 300_000];
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&image).expect("gz");
            e.finish().expect("gz")
        };
        let zst = ruzstd::encoding::compress_to_vec(
            image.as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut std::io::BufReader::new(image.as_slice()), &mut xz).expect("xz");
        let len = image.len() as u64;
        for (kind, data) in [
            (Compression::Gzip, &gz),
            (Compression::Zstd, &zst),
            (Compression::Xz, &xz),
            (Compression::None, &image),
        ] {
            assert_eq!(
                decompress(kind, data, len - 1),
                Err(ModinfoError::TooLarge {
                    kind: kind.name(),
                    limit: len - 1
                }),
                "{}",
                kind.name()
            );
            assert_eq!(
                decompress(kind, data, len).as_deref(),
                Ok(image.as_slice()),
                "{}",
                kind.name()
            );
        }
        assert_eq!(xz_declared_size(&xz), Ok(len));
        assert!(xz_declared_size(&xz[..xz.len() / 2]).is_err(), "truncated");
        assert!(xz_declared_size(b"not xz").is_err());
    }

    /// (b) What a zstd header declares is checked before the decoder reserves its window.
    #[test]
    fn zstd_header_sizes() {
        // Window descriptor 0x68: 2^(10+13) = 8 MiB, no content size (zstd -19 on a pipe).
        let piped = [0x28, 0xb5, 0x2f, 0xfd, 0x04, 0x68];
        assert_eq!(
            zstd_declared(&piped),
            Ok(ZstdDeclared {
                window: 8 << 20,
                content_size: None
            })
        );
        // Single segment, 4-byte content size of 3 GiB: window = content.
        let big = [0x28, 0xb5, 0x2f, 0xfd, 0xa0, 0, 0, 0, 0xc0];
        assert_eq!(
            zstd_declared(&big),
            Ok(ZstdDeclared {
                window: 3 << 30,
                content_size: Some(3 << 30)
            })
        );
        assert!(matches!(
            decompress(Compression::Zstd, &big, MAX_DECOMPRESSED_MODULE),
            Err(ModinfoError::TooLarge { .. })
        ));
        // 2-byte content size is offset by 256.
        let two = [0x28, 0xb5, 0x2f, 0xfd, 0x60, 0x00, 0x01];
        assert_eq!(
            zstd_declared(&two).map(|d| d.content_size),
            Ok(Some(256 + 256))
        );
        assert!(zstd_declared(&piped[..5]).is_err());
    }

    #[test]
    fn compressed_modules_round_trip() {
        use std::io::Write;
        let elf = crate::loader::tests::ko("kafs", "6.1.0-56-amd64 SMP ", "");
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
