//! Kernel mappings: which driver-container image serves which kernel.
//!
//! Plain serde types (no Kubernetes dependency) so that the operator can embed them in
//! its custom resource. Selection is a pure function: first match wins; no match is an
//! error naming the kernel and every mapping tried.

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::kernel::KernelRelease;

/// One entry of `kernelMappings`: exactly one of `literal`, `regexp`, `semver`, and the
/// image template to use when it matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KernelMapping {
    /// The whole kernel release, compared exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<String>,
    /// A regular expression that must match the WHOLE release (it is anchored for you).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regexp: Option<String>,
    /// A semver range (e.g. `>=6.1, <6.2`) over the release's `X.Y.Z`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    /// Image template, e.g. `registry/kafs:${KERNEL_FULL_VERSION}`.
    #[serde(alias = "image")]
    pub container_image: String,
}

/// A validated matcher of a [`KernelMapping`].
#[derive(Debug, Clone)]
pub enum KernelMatcher {
    Literal(String),
    Regexp { source: String, anchored: Regex },
    Semver(semver::VersionReq),
}

impl KernelMatcher {
    pub fn matches(&self, kernel: &KernelRelease) -> bool {
        match self {
            Self::Literal(l) => l == kernel.full(),
            Self::Regexp { anchored, .. } => anchored.is_match(kernel.full()),
            Self::Semver(req) => req.matches(&kernel.semver()),
        }
    }
}

impl fmt::Display for KernelMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Literal(l) => write!(f, "literal {l:?}"),
            Self::Regexp { source, .. } => write!(f, "regexp {source:?}"),
            Self::Semver(r) => write!(f, "semver {:?}", r.to_string()),
        }
    }
}

/// Template variables an image may use.
pub const TEMPLATE_VARIABLES: &[&str] = &[
    "KERNEL_FULL_VERSION",
    "KERNEL_VERSION",
    "KERNEL_XYZ",
    "KERNEL_X",
    "KERNEL_Y",
    "KERNEL_Z",
    "KERNEL_KABI_TAG",
    "MODULE_VERSION",
];

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("kernelMappings[{index}]: set exactly one of literal, regexp, semver (found {found})")]
    MatcherCount { index: usize, found: usize },
    #[error("kernelMappings[{index}].regexp {pattern:?} is invalid: {source}")]
    Regexp {
        index: usize,
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("kernelMappings[{index}].semver {range:?} is invalid: {source}")]
    Semver {
        index: usize,
        range: String,
        #[source]
        source: semver::Error,
    },
    #[error("kernelMappings[{index}].containerImage: {source}")]
    Template {
        index: usize,
        #[source]
        source: TemplateError,
    },
    #[error("no kernel mapping matches kernel {kernel:?}; tried: {}", if tried.is_empty() { "none (kernelMappings is empty)".to_owned() } else { tried.join("; ") })]
    NoMatch { kernel: String, tried: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template is empty")]
    Empty,
    #[error("unknown variable ${{{name}}} at byte {pos} (known: {})", TEMPLATE_VARIABLES.join(", "))]
    UnknownVariable { name: String, pos: usize },
    #[error("unterminated ${{ at byte {pos}")]
    Unterminated { pos: usize },
    #[error("${{MODULE_VERSION}} is used but no module version is configured")]
    NoModuleVersion,
}

/// A validated, ordered list of mappings.
#[derive(Debug, Clone)]
pub struct MappingSet {
    entries: Vec<(KernelMatcher, String)>,
}

/// The outcome of a successful selection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Selection {
    /// Index in `kernelMappings` of the mapping that matched.
    pub index: usize,
    /// Human description of the matcher (`literal "..."`).
    pub matcher: String,
    /// The rendered image.
    pub image: String,
}

impl MappingSet {
    /// Validates every mapping (one matcher each, compilable regexps and ranges,
    /// well-formed templates).
    pub fn compile(mappings: &[KernelMapping]) -> Result<Self, MappingError> {
        let entries = mappings
            .iter()
            .enumerate()
            .map(|(index, m)| {
                let matcher = compile_matcher(index, m)?;
                check_template(&m.container_image)
                    .map_err(|source| MappingError::Template { index, source })?;
                Ok((matcher, m.container_image.clone()))
            })
            .collect::<Result<_, MappingError>>()?;
        Ok(Self { entries })
    }

    /// First match wins. The template is rendered with the kernel's variables.
    pub fn select(
        &self,
        kernel: &KernelRelease,
        module_version: Option<&str>,
    ) -> Result<Selection, MappingError> {
        for (index, (matcher, template)) in self.entries.iter().enumerate() {
            if matcher.matches(kernel) {
                let image = render_template(template, kernel, module_version)
                    .map_err(|source| MappingError::Template { index, source })?;
                return Ok(Selection {
                    index,
                    matcher: matcher.to_string(),
                    image,
                });
            }
        }
        Err(MappingError::NoMatch {
            kernel: kernel.full().to_owned(),
            tried: self
                .entries
                .iter()
                .enumerate()
                .map(|(i, (m, _))| format!("[{i}] {m}"))
                .collect(),
        })
    }
}

fn compile_matcher(index: usize, m: &KernelMapping) -> Result<KernelMatcher, MappingError> {
    let found = [m.literal.is_some(), m.regexp.is_some(), m.semver.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    match (&m.literal, &m.regexp, &m.semver) {
        (Some(l), None, None) => Ok(KernelMatcher::Literal(l.clone())),
        (None, Some(r), None) => {
            let anchored =
                Regex::new(&format!("^(?:{r})$")).map_err(|source| MappingError::Regexp {
                    index,
                    pattern: r.clone(),
                    source,
                })?;
            Ok(KernelMatcher::Regexp {
                source: r.clone(),
                anchored,
            })
        }
        (None, None, Some(s)) => semver::VersionReq::parse(s)
            .map(KernelMatcher::Semver)
            .map_err(|source| MappingError::Semver {
                index,
                range: s.clone(),
                source,
            }),
        _ => Err(MappingError::MatcherCount { index, found }),
    }
}

/// Splits a template into literal text and `${VAR}` references.
fn parse_template(template: &str) -> Result<Vec<Piece<'_>>, TemplateError> {
    if template.is_empty() {
        return Err(TemplateError::Empty);
    }
    let mut pieces = Vec::new();
    let mut rest = template;
    let mut offset = 0;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            pieces.push(Piece::Text(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(TemplateError::Unterminated {
            pos: offset + start,
        })?;
        let name = &after[..end];
        if !TEMPLATE_VARIABLES.contains(&name) {
            return Err(TemplateError::UnknownVariable {
                name: name.to_owned(),
                pos: offset + start,
            });
        }
        pieces.push(Piece::Var(name));
        let consumed = start + 2 + end + 1;
        offset += consumed;
        rest = &rest[consumed..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

#[derive(Debug)]
enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
}

fn check_template(template: &str) -> Result<(), TemplateError> {
    parse_template(template).map(|_| ())
}

/// Renders an image template for a kernel.
pub fn render_template(
    template: &str,
    kernel: &KernelRelease,
    module_version: Option<&str>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len() + 32);
    for piece in parse_template(template)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(name) => match name {
                "KERNEL_FULL_VERSION" | "KERNEL_VERSION" => out.push_str(kernel.full()),
                "KERNEL_XYZ" => out.push_str(&kernel.xyz()),
                "KERNEL_X" => out.push_str(&kernel.major().to_string()),
                "KERNEL_Y" => out.push_str(&kernel.minor().to_string()),
                "KERNEL_Z" => out.push_str(&kernel.patch().to_string()),
                "KERNEL_KABI_TAG" => out.push_str(&kernel.kabi_tag()),
                "MODULE_VERSION" => {
                    out.push_str(module_version.ok_or(TemplateError::NoModuleVersion)?)
                }
                other => {
                    return Err(TemplateError::UnknownVariable {
                        name: other.to_owned(),
                        pos: 0,
                    });
                }
            },
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> KernelRelease {
        KernelRelease::parse(s).expect("valid release")
    }

    fn lit(l: &str, img: &str) -> KernelMapping {
        KernelMapping {
            literal: Some(l.into()),
            container_image: img.into(),
            ..Default::default()
        }
    }
    fn re(r: &str, img: &str) -> KernelMapping {
        KernelMapping {
            regexp: Some(r.into()),
            container_image: img.into(),
            ..Default::default()
        }
    }
    fn sv(r: &str, img: &str) -> KernelMapping {
        KernelMapping {
            semver: Some(r.into()),
            container_image: img.into(),
            ..Default::default()
        }
    }

    #[test]
    fn first_match_wins() {
        let set = MappingSet::compile(&[
            lit("6.1.0-56-amd64", "exact"),
            re(r"6\.1\..*", "re"),
            sv(">=6.0", "sv"),
        ])
        .expect("valid");
        assert_eq!(
            set.select(&k("6.1.0-56-amd64"), None).expect("m").image,
            "exact"
        );
        assert_eq!(set.select(&k("6.1.0-57-amd64"), None).expect("m").index, 1);
        assert_eq!(
            set.select(&k("6.5.0-1015-azure"), None).expect("m").image,
            "sv"
        );
    }

    #[test]
    fn regexp_is_anchored() {
        let set = MappingSet::compile(&[re(r"6\.1", "x")]).expect("valid");
        // Unanchored this would match; anchored it must not.
        let err = set
            .select(&k("6.1.0-56-amd64"), None)
            .expect_err("no match");
        let msg = err.to_string();
        assert!(
            msg.contains("6.1.0-56-amd64") && msg.contains(r#"regexp "6\\.1""#),
            "{msg}"
        );
        let set = MappingSet::compile(&[re(r"a|6\.1\.0-56-amd64", "x")]).expect("valid");
        assert!(set.select(&k("6.1.0-56-amd64-extra"), None).is_err());
        assert!(set.select(&k("6.1.0-56-amd64"), None).is_ok());
    }

    #[test]
    fn no_match_names_kernel_and_mappings() {
        let set = MappingSet::compile(&[lit("5.4.0", "a"), sv("^6.2", "b")]).expect("valid");
        let msg = set
            .select(&k("6.1.0-56-amd64"), None)
            .expect_err("none")
            .to_string();
        assert!(msg.contains(r#""6.1.0-56-amd64""#), "{msg}");
        assert!(msg.contains(r#"[0] literal "5.4.0""#), "{msg}");
        assert!(msg.contains("[1] semver"), "{msg}");
        let empty = MappingSet::compile(&[]).expect("valid");
        assert!(
            empty
                .select(&k("6.1.0"), None)
                .expect_err("none")
                .to_string()
                .contains("empty")
        );
    }

    #[test]
    fn semver_on_short_versions() {
        let set = MappingSet::compile(&[sv(">=6.7.0, <6.8.0", "x")]).expect("valid");
        assert!(set.select(&k("6.7"), None).is_ok());
        assert!(set.select(&k("6.8-rc1"), None).is_err());
    }

    #[test]
    fn validation_names_the_rule() {
        let both = KernelMapping {
            literal: Some("a".into()),
            regexp: Some("b".into()),
            container_image: "x".into(),
            ..Default::default()
        };
        let e = MappingSet::compile(&[lit("1", "x"), both]).expect_err("invalid");
        assert!(
            e.to_string()
                .starts_with("kernelMappings[1]: set exactly one"),
            "{e}"
        );
        let e = MappingSet::compile(&[re("(", "x")]).expect_err("invalid");
        assert!(e.to_string().contains("kernelMappings[0].regexp"), "{e}");
        let e = MappingSet::compile(&[sv("not a range", "x")]).expect_err("invalid");
        assert!(e.to_string().contains("kernelMappings[0].semver"), "{e}");
        let e = MappingSet::compile(&[lit("1", "img:${KERNEL_FOO}")]).expect_err("invalid");
        assert!(
            e.to_string().contains("unknown variable ${KERNEL_FOO}"),
            "{e}"
        );
        let e = MappingSet::compile(&[lit("1", "img:${KERNEL_X")]).expect_err("invalid");
        assert!(e.to_string().contains("unterminated"), "{e}");
    }

    #[test]
    fn template_variables() {
        let t = "r/auristor-kmod-${MODULE_VERSION}:${KERNEL_KABI_TAG} ${KERNEL_FULL_VERSION} ${KERNEL_VERSION} ${KERNEL_XYZ} ${KERNEL_X}.${KERNEL_Y}.${KERNEL_Z}";
        let out = render_template(t, &k("4.18.0-305.49.1.el8_4.x86_64"), Some("2021.05-21"))
            .expect("renders");
        assert_eq!(
            out,
            "r/auristor-kmod-2021.05-21:4.18.0-305.el8.x86_64 4.18.0-305.49.1.el8_4.x86_64 4.18.0-305.49.1.el8_4.x86_64 4.18.0 4.18.0"
        );
        assert_eq!(
            render_template("${MODULE_VERSION}", &k("6.1"), None),
            Err(TemplateError::NoModuleVersion)
        );
        assert_eq!(
            render_template("a$b{c}", &k("6.1"), None).as_deref(),
            Ok("a$b{c}")
        );
    }

    #[test]
    fn kabi_tag_defined_for_every_kind() {
        for s in [
            "4.18.0-305.rt7.72.el8.x86_64",
            "6.7",
            "6.1.0-56-amd64",
            "5.15.0-91-generic",
            "6.5.0-1015-azure",
            "5.15.133+",
        ] {
            let out = render_template("i:${KERNEL_KABI_TAG}", &k(s), None).expect("renders");
            assert!(out.len() > 2, "{s}");
        }
    }

    proptest::proptest! {
        /// First match wins: the selected index is the first literal equal to the kernel,
        /// and no match is an error listing every mapping.
        #[test]
        fn first_literal_match_wins(
            lits in proptest::collection::vec(proptest::sample::select(vec!["6.1.0-1-amd64", "6.1.0-2-amd64", "5.15.0-91-generic"]), 0..6),
            kernel in proptest::sample::select(vec!["6.1.0-1-amd64", "6.1.0-2-amd64", "5.15.0-91-generic"]),
        ) {
            let maps: Vec<KernelMapping> = lits.iter().enumerate().map(|(i, l)| lit(l, &format!("img{i}"))).collect();
            let set = MappingSet::compile(&maps).expect("valid");
            match (set.select(&k(kernel), None), lits.iter().position(|l| *l == kernel)) {
                (Ok(sel), Some(i)) => {
                    proptest::prop_assert_eq!(sel.index, i);
                    proptest::prop_assert_eq!(sel.image, format!("img{i}"));
                }
                (Err(MappingError::NoMatch { tried, .. }), None) => proptest::prop_assert_eq!(tried.len(), lits.len()),
                (other, expected) => proptest::prop_assert!(false, "{other:?} vs {expected:?}"),
            }
        }
    }

    #[test]
    fn yaml_shape() {
        let y = "- literal: 6.1.0-56-amd64\n  containerImage: a\n- regexp: '^6\\.1\\..*$'\n  image: b\n- semver: '>=6.1, <6.2'\n  containerImage: c\n";
        let m: Vec<KernelMapping> = serde_norway::from_str(y).expect("parses");
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].container_image, "b");
        let bad = "- literal: x\n  containerImage: a\n  bogus: 1\n";
        assert!(serde_norway::from_str::<Vec<KernelMapping>>(bad).is_err());
    }
}
