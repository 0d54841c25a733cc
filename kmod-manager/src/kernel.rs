//! Kernel release strings (`uname -r`) parsed into a total, panic-free model.
//!
//! Every input either parses or yields a [`KernelReleaseError`] naming the rule it broke.
//! Only the leading `X[.Y[.Z]]` must be numeric; everything after it is kept verbatim and
//! mined, best effort, for the distro stream, flavour and architecture.

use std::fmt;

/// Longest release the kernel can report (`struct utsname.release` is 65 bytes with NUL).
pub const MAX_RELEASE_LEN: usize = 64;

/// Architectures recognised as the last `.`, `-` or `+` separated field of a release.
const ARCHES: &[&str] = &[
    "x86_64", "aarch64", "ppc64le", "ppc64", "s390x", "i686", "i386", "armv7hl", "riscv64",
    "amd64", "arm64", "armhf", "armmp", "686", "686-pae", "s390",
];

/// Why a kernel release string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelReleaseError {
    #[error("kernel release is empty")]
    Empty,
    #[error("kernel release is {len} bytes long, the kernel allows at most {MAX_RELEASE_LEN}")]
    TooLong { len: usize },
    #[error(
        "kernel release {release:?} contains {ch:?} at byte {pos}: only printable ASCII without spaces or '/' is allowed"
    )]
    InvalidChar {
        release: String,
        ch: char,
        pos: usize,
    },
    #[error("kernel release {release:?} does not start with a numeric major version")]
    NoMajor { release: String },
    #[error(
        "kernel release {release:?}: version field {field} ({value:?}) is not a number that fits in 32 bits"
    )]
    BadNumber {
        release: String,
        field: &'static str,
        value: String,
    },
}

/// A parsed kernel release such as `4.18.0-305.49.1.el8_4.x86_64` or `6.1.0-56-amd64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRelease {
    full: String,
    /// The leading `X[.Y[.Z]]` exactly as written.
    version_text: String,
    major: u32,
    minor: Option<u32>,
    patch: Option<u32>,
    /// Everything after `X[.Y[.Z]]`, verbatim (may be empty).
    rest: String,
    stream: Option<String>,
    flavour: Option<String>,
    arch: Option<String>,
    rt: bool,
}

impl KernelRelease {
    /// Parses a release string; never panics.
    pub fn parse(input: &str) -> Result<Self, KernelReleaseError> {
        if input.is_empty() {
            return Err(KernelReleaseError::Empty);
        }
        if input.len() > MAX_RELEASE_LEN {
            return Err(KernelReleaseError::TooLong { len: input.len() });
        }
        if let Some((pos, ch)) = input
            .char_indices()
            .find(|&(_, c)| !c.is_ascii_graphic() || c == '/')
        {
            return Err(KernelReleaseError::InvalidChar {
                release: input.to_owned(),
                ch,
                pos,
            });
        }
        let (numbers, rest) = split_version(input);
        let mut parts = numbers.split('.');
        let major = match parts.next() {
            Some(m) if !m.is_empty() => parse_num(input, "major", m)?,
            _ => {
                return Err(KernelReleaseError::NoMajor {
                    release: input.to_owned(),
                });
            }
        };
        let minor = parts
            .next()
            .map(|m| parse_num(input, "minor", m))
            .transpose()?;
        let patch = parts
            .next()
            .map(|p| parse_num(input, "patch", p))
            .transpose()?;
        let rest = rest.to_owned();
        let (arch, before_arch) = find_arch(&rest);
        let stream = find_stream(&rest);
        let rt = is_rt(&rest);
        let flavour = find_flavour(before_arch, arch.as_deref(), rt, &rest);
        Ok(Self {
            full: input.to_owned(),
            version_text: numbers.to_owned(),
            major,
            minor,
            patch,
            rest,
            stream,
            flavour,
            arch,
            rt,
        })
    }

    /// The release exactly as reported by the kernel.
    pub fn full(&self) -> &str {
        &self.full
    }
    pub fn major(&self) -> u32 {
        self.major
    }
    /// Minor version; `0` when the release has none (e.g. `6`).
    pub fn minor(&self) -> u32 {
        self.minor.unwrap_or(0)
    }
    /// Patch level; `0` when the release has none (e.g. `6.8-rc1`).
    pub fn patch(&self) -> u32 {
        self.patch.unwrap_or(0)
    }
    /// `X.Y.Z`, missing fields rendered as `0`.
    pub fn xyz(&self) -> String {
        format!("{}.{}.{}", self.major, self.minor(), self.patch())
    }
    /// `X.Y.Z` as a semver version, for range matching.
    pub fn semver(&self) -> semver::Version {
        semver::Version::new(
            u64::from(self.major),
            u64::from(self.minor()),
            u64::from(self.patch()),
        )
    }
    /// Everything after `X[.Y[.Z]]`.
    pub fn rest(&self) -> &str {
        &self.rest
    }
    /// Distro stream such as `el8`, `el9`, `fc39`, `amzn2023`.
    pub fn stream(&self) -> Option<&str> {
        self.stream.as_deref()
    }
    /// Flavour such as `amd64`, `rt-amd64`, `generic`, `azure`, `rt`, `debug`.
    pub fn flavour(&self) -> Option<&str> {
        self.flavour.as_deref()
    }
    /// Architecture as spelled in the release (`x86_64`, `amd64`, ...).
    pub fn arch(&self) -> Option<&str> {
        self.arch.as_deref()
    }
    /// Whether this is a PREEMPT_RT kernel.
    pub fn is_rt(&self) -> bool {
        self.rt
    }

    /// The RHEL kABI image tag of the original system, made total.
    ///
    /// For RHEL-like releases (an `elN` stream) the tag keeps `X.Y.Z-<first build number>`,
    /// the RT marker when present, the major stream and the architecture:
    /// `4.18.0-305.49.1.el8_4.x86_64` -> `4.18.0-305.el8.x86_64`,
    /// `5.14.0-284.11.1.rt14.296.el9_2.x86_64` -> `5.14.0-284.rt14.el9.x86_64`.
    /// Any other release has no kABI stream and the tag is the full release.
    pub fn kabi_tag(&self) -> String {
        let Some(stream) = self.stream.as_deref().filter(|s| s.starts_with("el")) else {
            return self.full.clone();
        };
        // The version as written (not X.Y.Z padded with zeros) keeps the tag a valid
        // release no longer than the input.
        let mut tag = self.version_text.clone();
        if let Some(build) = self
            .rest
            .strip_prefix('-')
            .and_then(|r| r.split(['.', '-', '+']).next())
            .filter(|b| !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()))
        {
            tag.push('-');
            tag.push_str(build);
        }
        if let Some(rt) = self.rest.split(['.', '-', '+']).find(|f| is_rt_token(f)) {
            tag.push('.');
            tag.push_str(rt);
        }
        tag.push('.');
        tag.push_str(stream);
        if let Some(arch) = &self.arch {
            tag.push('.');
            tag.push_str(arch);
        }
        // Separators are added where a malformed release had none (found by fuzzing:
        // `6rt<digits>.el6`); never return a tag longer than the release itself.
        if tag.len() > self.full.len() {
            return self.full.clone();
        }
        tag
    }
}

impl fmt::Display for KernelRelease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl std::str::FromStr for KernelRelease {
    type Err = KernelReleaseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Splits `6.1.0-56-amd64` into (`6.1.0`, `-56-amd64`): at most three dot-separated
/// digit runs.
fn split_version(input: &str) -> (&str, &str) {
    let bytes = input.as_bytes();
    let mut end = 0;
    let mut dots = 0;
    while end < bytes.len() {
        let b = bytes[end];
        if b.is_ascii_digit() {
            end += 1;
        } else if b == b'.'
            && dots < 2
            && end > 0
            && bytes[end - 1].is_ascii_digit()
            && bytes.get(end + 1).is_some_and(u8::is_ascii_digit)
        {
            dots += 1;
            end += 1;
        } else {
            break;
        }
    }
    input.split_at(end)
}

fn parse_num(release: &str, field: &'static str, value: &str) -> Result<u32, KernelReleaseError> {
    value.parse().map_err(|_| KernelReleaseError::BadNumber {
        release: release.to_owned(),
        field,
        value: value.to_owned(),
    })
}

/// Finds a known architecture at the end of `rest` and returns it with what precedes it.
fn find_arch(rest: &str) -> (Option<String>, &str) {
    // Longest names first so that `686-pae` wins over `686`.
    let mut arches: Vec<&str> = ARCHES.to_vec();
    arches.sort_by_key(|a| std::cmp::Reverse(a.len()));
    // RHEL debug/64k kernels append `+debug` after the arch.
    let core = rest.split('+').next().unwrap_or(rest);
    for arch in arches {
        if let Some(before) = core.strip_suffix(arch)
            && (before.ends_with('.') || before.ends_with('-'))
        {
            return (Some(arch.to_owned()), &before[..before.len() - 1]);
        }
    }
    (None, core)
}

fn find_stream(rest: &str) -> Option<String> {
    const PREFIXES: &[&str] = &["el", "fc", "amzn", "an", "oe", "ph", "uek"];
    rest.split(['.', '-', '+', '_'])
        .find(|field| {
            PREFIXES.iter().any(|p| {
                field
                    .strip_prefix(p)
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .map(str::to_owned)
}

fn is_rt_token(field: &str) -> bool {
    field
        .strip_prefix("rt")
        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
}

fn is_rt(rest: &str) -> bool {
    rest.split(['.', '-', '+', '_']).any(is_rt_token)
}

/// Flavour: a `+suffix` (RHEL), the non-numeric dash-separated tail (Debian, Ubuntu,
/// SUSE), the Debian arch-flavour itself (`amd64`), or `rt` for RHEL RT kernels.
fn find_flavour(before_arch: &str, arch: Option<&str>, rt: bool, rest: &str) -> Option<String> {
    if let Some((_, plus)) = rest.split_once('+')
        && !plus.is_empty()
    {
        return Some(plus.to_owned());
    }
    let dash_style = arch.is_none_or(|_| !rest.contains(".el") && !rest.contains(".fc"));
    if dash_style {
        // Tail of dash-separated fields after the last purely numeric/dotted build field.
        let fields: Vec<&str> = before_arch.split('-').collect();
        let start = fields
            .iter()
            .rposition(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
            .map_or(0, |i| i + 1);
        let mut tail: Vec<&str> = fields[start.min(fields.len())..]
            .iter()
            .copied()
            .filter(|f| !f.is_empty() && !f.contains('.'))
            .collect();
        if let Some(a) = arch
            && rest.ends_with(&format!("-{a}"))
        {
            tail.push(a);
        }
        if !tail.is_empty() {
            return Some(tail.join("-"));
        }
    }
    rt.then(|| "rt".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> KernelRelease {
        match KernelRelease::parse(s) {
            Ok(k) => k,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn rhel8() {
        let k = p("4.18.0-305.49.1.el8_4.x86_64");
        assert_eq!(k.xyz(), "4.18.0");
        assert_eq!(k.stream(), Some("el8"));
        assert_eq!(k.arch(), Some("x86_64"));
        assert!(!k.is_rt());
        assert_eq!(k.flavour(), None);
        assert_eq!(k.kabi_tag(), "4.18.0-305.el8.x86_64");
    }

    #[test]
    fn rhel_stream_is_major_stream() {
        assert_eq!(p("4.18.0-305.49.1.el8_4.x86_64").stream(), Some("el8"));
        assert_eq!(p("5.14.0-284.11.1.el9_2.x86_64").stream(), Some("el9"));
        assert_eq!(
            p("5.14.0-427.el9.x86_64").kabi_tag(),
            "5.14.0-427.el9.x86_64"
        );
    }

    #[test]
    fn rhel_rt() {
        let k = p("4.18.0-305.rt7.72.el8.x86_64");
        assert!(k.is_rt());
        assert_eq!(k.flavour(), Some("rt"));
        assert_eq!(k.kabi_tag(), "4.18.0-305.rt7.el8.x86_64");
        let k = p("5.14.0-284.11.1.rt14.296.el9_2.x86_64");
        assert!(k.is_rt());
        assert_eq!(k.stream(), Some("el9"));
        assert_eq!(k.kabi_tag(), "5.14.0-284.rt14.el9.x86_64");
    }

    #[test]
    fn rhel_debug_and_64k() {
        let k = p("5.14.0-70.13.1.el9_0.x86_64+debug");
        assert_eq!(k.flavour(), Some("debug"));
        assert_eq!(k.arch(), Some("x86_64"));
        assert_eq!(k.kabi_tag(), "5.14.0-70.el9.x86_64");
        assert_eq!(p("5.14.0-362.8.1.el9_3.aarch64+64k").flavour(), Some("64k"));
    }

    #[test]
    fn debian() {
        let k = p("6.1.0-56-amd64");
        assert_eq!(k.xyz(), "6.1.0");
        assert_eq!(k.arch(), Some("amd64"));
        assert_eq!(k.flavour(), Some("amd64"));
        assert_eq!(k.stream(), None);
        assert_eq!(k.kabi_tag(), "6.1.0-56-amd64");
        let rt = p("6.1.0-18-rt-amd64");
        assert!(rt.is_rt());
        assert_eq!(rt.flavour(), Some("rt-amd64"));
        assert_eq!(p("6.1.0-18-cloud-amd64").flavour(), Some("cloud-amd64"));
        assert_eq!(p("6.1.0-18-686-pae").arch(), Some("686-pae"));
    }

    #[test]
    fn ubuntu_and_cloud() {
        for (s, fl) in [
            ("5.15.0-91-generic", "generic"),
            ("6.5.0-1015-azure", "azure"),
            ("5.15.0-1051-aws", "aws"),
            ("6.2.0-1018-gcp", "gcp"),
            ("5.15.0-91-lowlatency", "lowlatency"),
            ("5.14.21-150500.55.39-default", "default"),
            (
                "5.15.133.1-microsoft-standard-WSL2",
                "microsoft-standard-WSL2",
            ),
        ] {
            let k = p(s);
            assert_eq!(k.flavour(), Some(fl), "{s}");
            assert_eq!(k.kabi_tag(), s);
        }
        assert_eq!(p("5.15.133.1-microsoft-standard-WSL2").xyz(), "5.15.133");
    }

    #[test]
    fn amazon_fedora() {
        let k = p("6.1.66-91.167.amzn2023.x86_64");
        assert_eq!(k.stream(), Some("amzn2023"));
        assert_eq!(k.arch(), Some("x86_64"));
        assert_eq!(k.kabi_tag(), "6.1.66-91.167.amzn2023.x86_64");
        assert_eq!(p("6.5.6-300.fc39.x86_64").stream(), Some("fc39"));
    }

    #[test]
    fn short_versions() {
        let k = p("6.7");
        assert_eq!(k.xyz(), "6.7.0");
        assert_eq!(k.rest(), "");
        let k = p("6.8-rc1");
        assert_eq!(k.xyz(), "6.8.0");
        assert_eq!(k.flavour(), Some("rc1"));
        assert_eq!(p("6").xyz(), "6.0.0");
        assert_eq!(p("5.15.133+").xyz(), "5.15.133");
        assert_eq!(p("6.6.7-arch1-1").xyz(), "6.6.7");
    }

    #[test]
    fn kabi_tag_never_longer_than_release() {
        // cargo-fuzz found this 64-byte input; its tag used to be 65 bytes (invalid).
        let s = "6rt666666666660000000016302666666666600000000163027811178111.el6";
        let k = p(s);
        assert!(k.kabi_tag().len() <= s.len());
        assert!(KernelRelease::parse(&k.kabi_tag()).is_ok());
    }

    #[test]
    fn errors_name_the_rule() {
        assert_eq!(KernelRelease::parse(""), Err(KernelReleaseError::Empty));
        assert!(matches!(
            KernelRelease::parse("linux-6.1"),
            Err(KernelReleaseError::NoMajor { .. })
        ));
        assert!(matches!(
            KernelRelease::parse("6.1 0"),
            Err(KernelReleaseError::InvalidChar {
                ch: ' ',
                pos: 3,
                ..
            })
        ));
        assert!(matches!(
            KernelRelease::parse("99999999999.1.0"),
            Err(KernelReleaseError::BadNumber { field: "major", .. })
        ));
        assert!(matches!(
            KernelRelease::parse(&"1".repeat(65)),
            Err(KernelReleaseError::TooLong { len: 65 })
        ));
        assert!(matches!(
            KernelRelease::parse("6.1.0/../x"),
            Err(KernelReleaseError::InvalidChar { ch: '/', .. })
        ));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            #[test]
            fn arbitrary_strings_never_panic(s in "\\PC*") {
                if let Ok(k) = KernelRelease::parse(&s) {
                    let _ = (k.kabi_tag(), k.xyz(), k.semver(), k.flavour(), k.arch(), k.stream());
                }
            }

            #[test]
            fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..80)) {
                let s = String::from_utf8_lossy(&b);
                if let Ok(k) = KernelRelease::parse(&s) {
                    let _ = k.kabi_tag();
                }
            }

            #[test]
            fn release_shaped_strings_always_parse_and_tag(
                s in "[0-9]{1,3}(\\.[0-9]{1,3}){0,2}([-+_a-z][-.+_a-z0-9]{0,49})?(\\.el[0-9](_[0-9])?)?[-.+_a-z0-9]{0,6}",
            ) {
                prop_assume!(s.len() <= MAX_RELEASE_LEN);
                let k = KernelRelease::parse(&s).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let tag = k.kabi_tag();
                prop_assert!(tag.len() <= s.len(), "{tag:?} longer than {s:?}");
                prop_assert!(KernelRelease::parse(&tag).is_ok(), "{tag:?} of {s:?}");
            }

            #[test]
            fn kernel_like_strings_parse_and_round_trip(
                x in 0u32..100, y in 0u32..100, z in 0u32..1000,
                rest in "(-[0-9]{1,4}(\\.[0-9]{1,3}){0,2}(\\.rt[0-9]{1,2})?(\\.el[89](_[0-9])?)?(\\.(x86_64|aarch64))?|-[0-9]{1,4}-(generic|azure|aws|rt-amd64|amd64|cloud-amd64))?",
            ) {
                let s = format!("{x}.{y}.{z}{rest}");
                prop_assume!(s.len() <= MAX_RELEASE_LEN);
                let k = KernelRelease::parse(&s).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(k.full(), s.as_str());
                prop_assert_eq!(k.to_string(), s.clone());
                prop_assert_eq!(k.xyz(), format!("{x}.{y}.{z}"));
                prop_assert_eq!(k.rest(), rest.as_str());
                prop_assert_eq!(format!("{}{}", k.xyz(), k.rest()), s.clone());
                // Re-parsing the display form gives the same value.
                prop_assert_eq!(KernelRelease::parse(&k.to_string()).ok(), Some(k.clone()));
                // The kABI tag is itself a valid release with the same X.Y.Z.
                let tag = KernelRelease::parse(&k.kabi_tag()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(tag.xyz(), k.xyz());
                prop_assert_eq!(tag.is_rt(), k.is_rt());
            }
        }
    }
}
