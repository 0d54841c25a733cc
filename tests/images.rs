//! The Dockerfiles under `images/`, read by a small line parser and checked against the
//! workspace: every image starts `FROM scratch` (CI builds with no registry reachable),
//! copies only repository paths that exist or release binaries that are real binary
//! targets of the workspace, declares every build argument it uses, runs an exec-form
//! `ENTRYPOINT` naming a binary it copies, as a numeric user (non-root except the
//! driver container), carries the OCI labels; the driver container takes its kernel and
//! module version as required arguments that select the staged module tree and the
//! staged `afsd` tree. Then the images are checked against the pod specs the operator
//! builds for them, and `images/README.md` against the Dockerfiles.
//!
//! The parser knows what these Dockerfiles use: instructions, `\` continuations,
//! comment lines (also inside a continuation), parser directives, exec and shell form,
//! shell-like quoting and `$NAME` / `${NAME}` / `${NAME:-word}` / `${NAME:+word}`.
//! Single quotes do not stop variable references here (they do in Docker): every
//! reference must be declared either way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use afs_operator::crd::SpecialResource;
use afs_operator::objects::{Desired, Inputs, build, revision};
use afs_repo_tests::repo_root;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use regex::Regex;
use serde::Deserialize as _;
use serde_json::{Value, json};

/// Every image lives in `images/<name>/Dockerfile`.
const IMAGES_DIR: &str = "images";
const DOCKERFILE: &str = "Dockerfile";
/// Module trees staged by `images/kmod/stage-modules`, git-ignored: with the afsd trees,
/// the only build context paths an image may reach through a required (default-less)
/// build argument.
const STAGED_MODULES: &str = "images/kmod/modules";
/// `afsd` trees staged by `images/kmod/stage-afsd`, git-ignored, one per module version.
const STAGED_AFSD: &str = "images/kmod/afsd";
const STAGED_TREES: [&str; 2] = [STAGED_MODULES, STAGED_AFSD];
/// The driver container's build argument naming the afsd tree laid over `/`, and the
/// one carrying afsd's version into its label.
const AFSD_DIR_ARG: &str = "AFSD_DIR";
const AFSD_VERSION_ARG: &str = "AFSD_VERSION";
const AFSD_LABEL: &str = "afs.csi.auristor.com/afsd-version";
/// The labels every image carries.
const OCI_TITLE: &str = "org.opencontainers.image.title";
const OCI_SOURCE: &str = "org.opencontainers.image.source";
const OCI_LICENSES: &str = "org.opencontainers.image.licenses";
const OCI_LABELS: [&str; 5] = [
    OCI_TITLE,
    "org.opencontainers.image.description",
    "org.opencontainers.image.version",
    OCI_SOURCE,
    OCI_LICENSES,
];
/// The driver container's required build arguments and the labels that carry them.
const KERNEL_ARG: &str = "KERNEL_VERSION";
const MODULE_ARG: &str = "MODULE_VERSION";
const KERNEL_LABEL: &str = "afs.csi.auristor.com/kernel-version";
const MODULE_LABEL: &str = "afs.csi.auristor.com/module-version";
/// The build argument holding the packaged crate's version.
const VERSION_ARG: &str = "VERSION";
/// The operator's Deployment.
const OPERATOR_MANIFEST: &str = "deploy/operator.yaml";

const KEYWORDS: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

// ---------------------------------------------------------------------------------
// Parsing

/// One instruction: continuation lines joined, comment lines dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Instruction {
    /// Line (1-based) the instruction starts on.
    line: usize,
    /// Upper case.
    keyword: String,
    args: String,
}

/// Splits a Dockerfile into instructions.
fn parse(text: &str) -> Result<Vec<Instruction>, String> {
    let directive = Regex::new(r"^#\s*([A-Za-z]+)\s*=\s*(\S*)\s*$").expect("regex");
    let mut instructions = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    let mut in_directives = true;
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let trimmed = raw.trim();
        if in_directives {
            if let Some(c) = directive.captures(trimmed) {
                let (key, value) = (c[1].to_ascii_lowercase(), &c[2]);
                if key == "escape" && value != "\\" {
                    return Err(format!(
                        "line {number}: escape character {value:?} is not supported (only \\)"
                    ));
                }
                if matches!(key.as_str(), "syntax" | "escape" | "check") {
                    continue;
                }
            }
            in_directives = false;
        }
        // Comment and blank lines, also between the lines of one instruction.
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let line = raw.trim_end();
        let (body, continues) = match line.strip_suffix('\\') {
            Some(body) => (body, true),
            None => (line, false),
        };
        match pending.as_mut() {
            Some((_, joined)) => joined.push_str(body),
            None => pending = Some((number, body.trim_start().to_owned())),
        }
        if !continues && let Some((start, joined)) = pending.take() {
            instructions.push(instruction(start, &joined)?);
        }
    }
    match pending {
        Some((start, _)) => Err(format!(
            "line {start}: the instruction continues (trailing \\) past the end of the file"
        )),
        None => Ok(instructions),
    }
}

fn instruction(line: usize, text: &str) -> Result<Instruction, String> {
    let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let keyword = word.to_ascii_uppercase();
    if !KEYWORDS.contains(&keyword.as_str()) {
        return Err(format!("line {line}: unknown instruction {word:?}"));
    }
    let args = rest.trim();
    if args.is_empty() {
        return Err(format!("line {line}: {keyword} without arguments"));
    }
    Ok(Instruction {
        line,
        keyword,
        args: args.to_owned(),
    })
}

/// Shell-like words: whitespace separates; `"..."` and `'...'` quote; a backslash
/// escapes the next character (inside double quotes only `"`, `\` and `$`).
fn words(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(next) => word.push(next),
                    None => word.push('\\'),
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => return Err(format!("unterminated double quote in {text:?}")),
                        Some('"') => break,
                        Some('\\') if matches!(chars.peek(), Some('"' | '\\' | '$')) => {
                            word.extend(chars.next());
                        }
                        Some(other) => word.push(other),
                    }
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => return Err(format!("unterminated single quote in {text:?}")),
                        Some('\'') => break,
                        Some(other) => word.push(other),
                    }
                }
            }
            other => {
                in_word = true;
                word.push(other);
            }
        }
    }
    if in_word {
        out.push(word);
    }
    Ok(out)
}

/// `NAME=value` pairs (LABEL, ENV, ARG); a bare `NAME` has no value.
fn pairs(text: &str) -> Result<Vec<(String, Option<String>)>, String> {
    Ok(words(text)?
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (w, None),
        })
        .collect())
}

/// Exec form (`["a", "b"]`); shell form needs `/bin/sh`, which scratch images lack.
fn exec_form(args: &str) -> Result<Vec<String>, String> {
    if !args.starts_with('[') {
        return Err(format!(
            "{args:?} is shell form: it runs through /bin/sh, which a scratch image lacks; use exec form [\"...\"]"
        ));
    }
    let argv: Vec<String> = serde_json::from_str(args).map_err(|e| {
        format!(
            "{args:?} is not a JSON array of strings ({e}); Docker would run it through /bin/sh"
        )
    })?;
    if argv.first().is_none_or(String::is_empty) {
        return Err(format!("{args:?} names no program"));
    }
    Ok(argv)
}

/// A variable reference in an instruction's text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reference {
    name: String,
    /// `:-` or `:+` (also without the colon) and its word.
    modifier: Option<(char, String)>,
    start: usize,
    end: usize,
}

fn references(text: &str) -> Vec<Reference> {
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    let pattern = PATTERN.get_or_init(|| {
        Regex::new(
            r"(\\?)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))",
        )
        .expect("regex")
    });
    pattern
        .captures_iter(text)
        .filter(|c| c[1].is_empty())
        .map(|c| {
            let whole = c.get(0).expect("match");
            Reference {
                name: c
                    .get(2)
                    .or_else(|| c.get(5))
                    .expect("a name")
                    .as_str()
                    .to_owned(),
                modifier: c.get(3).map(|m| {
                    let op = m.as_str().chars().next().expect("one character");
                    (op, c.get(4).map_or("", |w| w.as_str()).to_owned())
                }),
                start: whole.start(),
                end: whole.end(),
            }
        })
        .collect()
}

/// Build arguments and environment in scope: name -> value (`None`: declared without a
/// default, so only the build command can give it one).
type Scope = BTreeMap<String, Option<String>>;

/// `text` with every reference the scope can resolve replaced; the names it cannot
/// (declared without default, or undeclared) are returned and their references kept.
fn substitute(text: &str, scope: &Scope) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut unresolved = Vec::new();
    let mut last = 0;
    for r in references(text) {
        out.push_str(&text[last..r.start]);
        last = r.end;
        let value = scope.get(&r.name).cloned().flatten();
        match (&r.modifier, value) {
            (Some(('-', word)), v) => {
                out.push_str(v.filter(|v| !v.is_empty()).as_ref().unwrap_or(word))
            }
            (Some((_, word)), Some(v)) => out.push_str(if v.is_empty() { "" } else { word }),
            (None, Some(v)) => out.push_str(&v),
            (_, None) => {
                unresolved.push(r.name.clone());
                out.push_str(&text[r.start..r.end]);
            }
        }
    }
    out.push_str(&text[last..]);
    (out, unresolved)
}

/// [`substitute`], where a value that itself holds a reference the scope cannot resolve
/// (an ARG whose default names a required one) leaves that name unresolved too.
fn resolve(text: &str, scope: &Scope) -> (String, Vec<String>) {
    let (resolved, mut unresolved) = substitute(text, scope);
    for r in references(&resolved) {
        if !unresolved.contains(&r.name) {
            unresolved.push(r.name);
        }
    }
    (resolved, unresolved)
}

/// Under one of the staged trees (or one itself).
fn is_staged(rel: &str) -> bool {
    STAGED_TREES
        .iter()
        .any(|tree| rel == *tree || rel.starts_with(&format!("{tree}/")))
}

// ---------------------------------------------------------------------------------
// The model of one Dockerfile

#[derive(Debug, Clone)]
struct CopyOp {
    line: usize,
    keyword: String,
    from: Option<String>,
    sources: Vec<String>,
    dest: String,
    /// The build arguments and environment in scope at this instruction.
    scope: Scope,
}

#[derive(Debug, Clone, Default)]
struct Stage {
    line: usize,
    base: String,
    name: Option<String>,
    /// ARGs of this stage; defaults as written (may reference earlier ones).
    args: Scope,
    /// ARGs and ENVs in scope at the end of the stage.
    scope: Scope,
    labels: BTreeMap<String, String>,
    copies: Vec<CopyOp>,
    user: Option<(usize, String)>,
    entrypoint: Option<(usize, Vec<String>)>,
}

#[derive(Debug, Clone, Default)]
struct Dockerfile {
    stages: Vec<Stage>,
}

impl Dockerfile {
    /// The stage the image is made of.
    fn image(&self) -> Option<&Stage> {
        self.stages.last()
    }
}

/// Builds the model and reports what is wrong in the file itself, each problem as
/// `line N: ...`.
fn model(text: &str) -> (Dockerfile, Vec<String>) {
    let mut problems = Vec::new();
    let instructions = match parse(text) {
        Ok(i) => i,
        Err(e) => return (Dockerfile::default(), vec![e]),
    };
    let mut global = Scope::new();
    let mut file = Dockerfile::default();
    for ins in instructions {
        let line = ins.line;
        let mut problem = |message: String| problems.push(format!("line {line}: {message}"));
        // Every reference must be declared before this instruction: build arguments
        // before the first FROM serve FROM lines only.
        let scope = file.stages.last().map_or(&global, |s| &s.scope);
        let declared = |name: &String| {
            scope.contains_key(name) || (ins.keyword == "FROM" && global.contains_key(name))
        };
        let undeclared: BTreeSet<String> = references(&ins.args)
            .into_iter()
            .map(|r| r.name)
            .filter(|name| !declared(name))
            .collect();
        for name in undeclared {
            problem(format!(
                "{} uses ${{{name}}}, which no ARG or ENV before it declares{}",
                ins.keyword,
                if global.contains_key(&name) {
                    " in this stage (an ARG before FROM must be repeated after it)"
                } else {
                    ""
                }
            ));
        }
        if ins.keyword == "FROM" {
            match from(&ins.args, &global) {
                Ok(stage) => {
                    let earlier = |s: &Stage| s.name.as_ref() == Some(&stage.base);
                    if !stage.base.eq_ignore_ascii_case("scratch")
                        && !file.stages.iter().any(earlier)
                    {
                        problem(format!(
                            "FROM {}: an image starts FROM scratch or from a stage declared above in this file (CI reaches no registry)",
                            stage.base
                        ));
                    }
                    file.stages.push(Stage { line, ..stage });
                }
                Err(e) => problem(e),
            }
            continue;
        }
        let Some(stage) = file.stages.last_mut() else {
            if ins.keyword == "ARG" {
                match pairs(&ins.args) {
                    Ok(args) => global.extend(args),
                    Err(e) => problem(e),
                }
            } else {
                problem(format!("{} before the first FROM", ins.keyword));
            }
            continue;
        };
        match ins.keyword.as_str() {
            "ARG" => match pairs(&ins.args) {
                Ok(args) => {
                    for (name, value) in args {
                        // A bare ARG in a stage inherits the global default.
                        let value = value.or_else(|| global.get(&name).cloned().flatten());
                        let resolved = value.as_ref().map(|v| substitute(v, &stage.scope).0);
                        stage.args.insert(name.clone(), value);
                        stage.scope.insert(name, resolved);
                    }
                }
                Err(e) => problem(e),
            },
            "ENV" => {
                let parsed = match ins.args.split_once(char::is_whitespace) {
                    // Legacy `ENV NAME value`.
                    Some((name, value)) if !name.contains('=') => {
                        Ok(vec![(name.to_owned(), Some(value.trim().to_owned()))])
                    }
                    _ => pairs(&ins.args),
                };
                match parsed {
                    Ok(vars) => {
                        for (name, value) in vars {
                            match value {
                                Some(v) => {
                                    let resolved = substitute(&v, &stage.scope).0;
                                    stage.scope.insert(name, Some(resolved));
                                }
                                None => problem(format!("ENV {name} without a value")),
                            }
                        }
                    }
                    Err(e) => problem(e),
                }
            }
            "LABEL" => match pairs(&ins.args) {
                Ok(labels) => {
                    for (key, value) in labels {
                        match value {
                            Some(v) => {
                                stage.labels.insert(key, v);
                            }
                            None => problem(format!("LABEL {key:?} without =value")),
                        }
                    }
                }
                Err(e) => problem(e),
            },
            "COPY" | "ADD" => match copy(&ins, &stage.scope) {
                Ok(op) => stage.copies.push(op),
                Err(e) => problem(e),
            },
            "USER" => stage.user = Some((line, ins.args.clone())),
            "ENTRYPOINT" | "CMD" => match exec_form(&ins.args) {
                Ok(argv) if ins.keyword == "ENTRYPOINT" => stage.entrypoint = Some((line, argv)),
                Ok(_) => {}
                Err(e) => problem(format!("{} {e}", ins.keyword)),
            },
            "RUN" if !ins.args.starts_with('[') && stage.base.eq_ignore_ascii_case("scratch") => {
                problem("RUN in shell form needs /bin/sh, which scratch lacks".to_owned());
            }
            "MAINTAINER" => problem("MAINTAINER is deprecated: use a LABEL".to_owned()),
            _ => {}
        }
    }
    if file.stages.is_empty() {
        problems.push("no FROM".to_owned());
    }
    (file, problems)
}

/// A stage from `FROM [--platform=...] <base> [AS <name>]`.
fn from(args: &str, global: &Scope) -> Result<Stage, String> {
    let w = words(args)?;
    let w: Vec<&String> = w.iter().filter(|w| !w.starts_with("--")).collect();
    let (base, name) = match w.as_slice() {
        [base] => (*base, None),
        [base, as_, name] if as_.eq_ignore_ascii_case("as") => (*base, Some((*name).clone())),
        _ => return Err(format!("FROM {args:?}: expected `FROM <base> [AS <name>]`")),
    };
    Ok(Stage {
        base: substitute(base, global).0,
        name,
        ..Stage::default()
    })
}

/// `COPY|ADD [--flag=...]... <source>... <dest>`, also in JSON form.
fn copy(ins: &Instruction, scope: &Scope) -> Result<CopyOp, String> {
    let items = if ins.args.starts_with('[') {
        serde_json::from_str::<Vec<String>>(&ins.args).map_err(|e| e.to_string())
    } else {
        words(&ins.args)
    }
    .map_err(|e| format!("{}: {e}", ins.keyword))?;
    let mut from = None;
    let mut rest = Vec::new();
    for item in items {
        match item.strip_prefix("--from=") {
            Some(stage) if rest.is_empty() => from = Some(stage.to_owned()),
            _ if item.starts_with("--") && rest.is_empty() => {}
            _ => rest.push(item),
        }
    }
    let Some(dest) = rest.pop().filter(|_| !rest.is_empty()) else {
        return Err(format!(
            "{} needs at least one source and a destination",
            ins.keyword
        ));
    };
    Ok(CopyOp {
        line: ins.line,
        keyword: ins.keyword.clone(),
        from,
        sources: rest,
        dest,
        scope: scope.clone(),
    })
}

// ---------------------------------------------------------------------------------
// What an image contains

/// `path` without `.` components, duplicate or trailing slashes; `None` when it is
/// absolute or climbs out with `..`.
fn context_path(path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?.to_owned()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

/// An absolute path in the image, normalized.
fn image_path(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// Files the image gets from the repository: image path -> repository path (relative).
/// Sources that the scope cannot resolve (the staged trees) are left out.
fn image_files(stage: &Stage, root: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for copy in &stage.copies {
        let (dest, _) = substitute(&copy.dest, &copy.scope);
        let into_dir = dest.ends_with('/') || copy.sources.len() > 1;
        for source in &copy.sources {
            let (resolved, unresolved) = resolve(source, &copy.scope);
            let Some(rel) = context_path(&resolved).filter(|_| unresolved.is_empty()) else {
                continue;
            };
            let on_disk = root.join(&rel);
            if on_disk.is_dir() {
                // The directory's contents go into dest.
                for file in walk(&on_disk) {
                    let inner = file.strip_prefix(&on_disk).expect("walked below");
                    let inner = inner.to_string_lossy();
                    files.insert(
                        image_path(&format!("{dest}/{inner}")),
                        format!("{rel}/{inner}"),
                    );
                }
            } else {
                let name = rel.rsplit('/').next().unwrap_or_default();
                let target = if into_dir {
                    format!("{dest}/{name}")
                } else {
                    dest.clone()
                };
                files.insert(image_path(&target), rel.clone());
            }
        }
    }
    files
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The image file a command runs: an absolute path, or a name looked up in the
/// image's `PATH`.
fn resolve_program(
    stage: &Stage,
    files: &BTreeMap<String, String>,
    program: &str,
) -> Option<String> {
    if program.starts_with('/') {
        let path = image_path(program);
        return files.contains_key(&path).then_some(path);
    }
    let path = stage
        .scope
        .get("PATH")
        .cloned()
        .flatten()
        .unwrap_or_default();
    path.split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| image_path(&format!("{dir}/{program}")))
        .find(|candidate| files.contains_key(candidate))
}

/// `uid[:gid]`, numeric.
fn numeric_user(user: &str) -> Option<(u32, Option<u32>)> {
    let (uid, gid) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let gid = match gid {
        Some(g) => Some(g.parse().ok()?),
        None => None,
    };
    Some((uid.parse().ok()?, gid))
}

// ---------------------------------------------------------------------------------
// The workspace

#[derive(Debug, Clone)]
struct Bin {
    package: String,
    version: String,
    license: String,
}

#[derive(Debug, Clone)]
struct Workspace {
    root: PathBuf,
    /// Binary targets of the workspace's crates, by name.
    bins: BTreeMap<String, Bin>,
    /// `workspace.package.repository`.
    repository: String,
}

fn workspace() -> &'static Workspace {
    static WORKSPACE: OnceLock<Workspace> = OnceLock::new();
    WORKSPACE.get_or_init(|| {
        let root = repo_root();
        let out = Command::new(env!("CARGO"))
            .args([
                "metadata",
                "--no-deps",
                "--offline",
                "--format-version",
                "1",
            ])
            .current_dir(&root)
            .output()
            .expect("cargo metadata runs");
        assert!(
            out.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
        let mut bins = BTreeMap::new();
        for package in meta["packages"].as_array().expect("packages") {
            let field = |key: &str| package[key].as_str().unwrap_or_default().to_owned();
            for target in package["targets"].as_array().expect("targets") {
                let is_bin = target["kind"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"));
                if is_bin {
                    bins.insert(
                        target["name"].as_str().expect("target name").to_owned(),
                        Bin {
                            package: field("name"),
                            version: field("version"),
                            license: field("license"),
                        },
                    );
                }
            }
        }
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
        let repository = Regex::new(r#"(?m)^repository\s*=\s*"([^"]+)""#)
            .expect("regex")
            .captures(&manifest)
            .map(|c| c[1].to_owned())
            .expect("workspace.package.repository in Cargo.toml");
        Workspace {
            root,
            bins,
            repository,
        }
    })
}

// ---------------------------------------------------------------------------------
// The checks

/// What one image must be.
#[derive(Debug, Clone, Copy)]
struct Policy {
    /// The workspace binary its ENTRYPOINT runs.
    binary: Option<&'static str>,
    /// Runs as root (loads kernel modules); every other image runs as a non-root user.
    root: bool,
    /// A driver container: one kernel, one module version.
    kernel_image: bool,
}

const DEFAULT_POLICY: Policy = Policy {
    binary: None,
    root: false,
    kernel_image: false,
};

/// The images the issue asks for, by directory under `images/`.
const POLICIES: [(&str, Policy); 3] = [
    (
        "csi-driver",
        Policy {
            binary: Some("csi-driver"),
            root: false,
            kernel_image: false,
        },
    ),
    (
        "kmod",
        Policy {
            binary: Some("kmod-manager"),
            root: true,
            kernel_image: true,
        },
    ),
    (
        "operator",
        Policy {
            binary: Some("afs-operator"),
            root: false,
            kernel_image: false,
        },
    ),
];

fn policy(image: &str) -> Policy {
    POLICIES
        .iter()
        .find(|(name, _)| *name == image)
        .map_or(DEFAULT_POLICY, |(_, p)| *p)
}

/// Every problem of one Dockerfile, given its text and the image's policy.
fn check(text: &str, policy: Policy, ws: &Workspace) -> Vec<String> {
    let (file, mut problems) = model(text);
    let stage_names: BTreeSet<&str> = file
        .stages
        .iter()
        .filter_map(|s| s.name.as_deref())
        .collect();
    for stage in &file.stages {
        for copy in &stage.copies {
            problems.extend(
                check_copy(copy, &stage_names, ws)
                    .into_iter()
                    .map(|p| format!("line {}: {p}", copy.line)),
            );
        }
    }
    if let Some(image) = file.image() {
        problems.extend(check_image(image, policy, ws));
    }
    problems
}

/// A COPY/ADD: sources inside the repository that exist, release binaries that are
/// workspace binaries, build-argument paths only into the staged trees.
fn check_copy(copy: &CopyOp, stage_names: &BTreeSet<&str>, ws: &Workspace) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(from) = &copy.from {
        if !stage_names.contains(from.as_str()) {
            problems.push(format!(
                "{} --from={from}: not a stage of this file (CI reaches no registry)",
                copy.keyword
            ));
        }
        return problems;
    }
    for source in &copy.sources {
        if copy.keyword == "ADD" && (source.contains("://") || source.starts_with("git@")) {
            problems.push(format!(
                "ADD {source}: a remote source; builds have no network, COPY from the repository"
            ));
            continue;
        }
        let (resolved, unresolved) = resolve(source, &copy.scope);
        let Some(rel) = context_path(&resolved) else {
            problems.push(format!(
                "{} {source}: not a path inside the build context (the repository root)",
                copy.keyword
            ));
            continue;
        };
        if !unresolved.is_empty() {
            if !is_staged(&rel) || STAGED_TREES.contains(&rel.as_str()) {
                problems.push(format!(
                    "{} {source}: uses build argument(s) {} without a default; only the staged trees {STAGED_MODULES}/ and {STAGED_AFSD}/ may",
                    copy.keyword,
                    unresolved.join(", ")
                ));
            }
            continue;
        }
        if is_staged(&rel) {
            problems.push(format!(
                "{} {source}: a staged tree must be selected by the required build argument {MODULE_ARG} (the module tree also by {KERNEL_ARG})",
                copy.keyword
            ));
            continue;
        }
        if rel == "target" || rel.starts_with("target/") {
            let mut parts: Vec<&str> = rel.split('/').collect();
            let name = parts.pop().unwrap_or_default();
            if !ws.bins.contains_key(name) {
                problems.push(format!(
                    "{} {source}: {name:?} is not a binary target of the workspace (binaries: {})",
                    copy.keyword,
                    ws.bins.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            if parts.last() != Some(&"release") {
                problems.push(format!(
                    "{} {source}: images carry release builds (a .../release/ directory)",
                    copy.keyword
                ));
            }
            continue;
        }
        if !ws.root.join(&rel).exists() {
            problems.push(format!(
                "{} {source}: {rel} does not exist in the repository",
                copy.keyword
            ));
        }
    }
    problems
}

/// The image's own stage: entrypoint, user, labels, versions, the kernel arguments.
fn check_image(image: &Stage, policy: Policy, ws: &Workspace) -> Vec<String> {
    let mut problems = Vec::new();
    let at = |line: usize, message: String| format!("line {line}: {message}");
    let files = image_files(image, &ws.root);

    // ENTRYPOINT: exec form (checked by the model), a workspace binary the image copies.
    let mut bin = None;
    match &image.entrypoint {
        None => problems.push(at(image.line, "the image has no ENTRYPOINT".to_owned())),
        Some((line, argv)) => {
            let program = &argv[0];
            match resolve_program(image, &files, program) {
                None => problems.push(at(
                    *line,
                    format!("ENTRYPOINT runs {program}, which no COPY puts in the image"),
                )),
                Some(path) => {
                    let source = &files[&path];
                    let name = source.rsplit('/').next().unwrap_or_default();
                    if !source.starts_with("target/") {
                        problems.push(at(
                            *line,
                            format!(
                                "ENTRYPOINT runs {path}, copied from {source}, not a built binary"
                            ),
                        ));
                    }
                    if let Some(want) = policy.binary
                        && name != want
                    {
                        problems.push(at(
                            *line,
                            format!("ENTRYPOINT runs {path}, copied from {source}; this image is for {want}"),
                        ));
                    }
                    bin = ws.bins.get(name);
                }
            }
        }
    }

    problems.extend(check_user(image, policy, &files, &ws.root));

    // Labels.
    for key in OCI_LABELS {
        match image.labels.get(key) {
            None => problems.push(at(image.line, format!("no LABEL {key}"))),
            Some(v) if v.trim().is_empty() => {
                problems.push(at(image.line, format!("LABEL {key} is empty")))
            }
            Some(_) => {}
        }
    }
    if let Some(source) = image.labels.get(OCI_SOURCE)
        && *source != ws.repository
    {
        problems.push(at(
            image.line,
            format!(
                "LABEL {OCI_SOURCE}={source:?}, but the workspace's repository is {:?}",
                ws.repository
            ),
        ));
    }
    if let Some(bin) = bin {
        if let Some(licenses) = image.labels.get(OCI_LICENSES)
            && *licenses != bin.license
        {
            problems.push(at(
                image.line,
                format!(
                    "LABEL {OCI_LICENSES}={licenses:?}, but {} is licensed {:?}",
                    bin.package, bin.license
                ),
            ));
        }
        if let Some(Some(version)) = image.args.get(VERSION_ARG)
            && *version != bin.version
        {
            problems.push(at(
                image.line,
                format!(
                    "ARG {VERSION_ARG}={version}, but {} is version {}",
                    bin.package, bin.version
                ),
            ));
        }
    }

    if policy.kernel_image {
        problems.extend(
            check_kernel_image(image)
                .into_iter()
                .map(|p| at(image.line, p)),
        );
    }
    problems
}

/// USER: numeric (kubelet can enforce runAsNonRoot only on a numeric user), root only
/// where the policy says so, and listed in the image's /etc/passwd and /etc/group.
fn check_user(
    image: &Stage,
    policy: Policy,
    files: &BTreeMap<String, String>,
    root: &Path,
) -> Vec<String> {
    let Some((line, user)) = &image.user else {
        return vec![format!(
            "line {}: no USER: name the user the image runs as",
            image.line
        )];
    };
    let Some((uid, gid)) = numeric_user(user) else {
        return vec![format!(
            "line {line}: USER {user}: use a numeric uid[:gid], which kubelet can check against runAsNonRoot"
        )];
    };
    let mut problems = Vec::new();
    if policy.root && uid != 0 {
        problems.push("this image loads kernel modules and runs as root".to_owned());
    }
    if !policy.root && uid == 0 {
        problems.push("this image must run as a non-root user".to_owned());
    }
    for (file, id) in [("/etc/passwd", Some(uid)), ("/etc/group", gid)] {
        let (Some(id), Some(source)) = (id, files.get(file)) else {
            continue;
        };
        let text = std::fs::read_to_string(root.join(source)).unwrap_or_default();
        let id = id.to_string();
        if !text
            .lines()
            .any(|l| l.split(':').nth(2) == Some(id.as_str()))
        {
            problems.push(format!("id {id} has no line in {file} ({source})"));
        }
    }
    problems
        .into_iter()
        .map(|p| format!("line {line}: USER {user}: {p}"))
        .collect()
}

/// The driver container: required kernel and module version arguments, carried by
/// labels, selecting the staged tree copied to `/lib/modules/<kernel>/` and, by module
/// version, the staged afsd tree laid over `/` (its version in a label), so that an
/// empty or missing argument fails the build instead of copying the wrong tree.
fn check_kernel_image(image: &Stage) -> Vec<String> {
    let mut problems = Vec::new();
    for (arg, label) in [(KERNEL_ARG, KERNEL_LABEL), (MODULE_ARG, MODULE_LABEL)] {
        match image.args.get(arg) {
            None => problems.push(format!("no ARG {arg}")),
            Some(Some(default)) => problems.push(format!(
                "ARG {arg}={default}: must be required (no default), or one kernel's modules would go out under any name"
            )),
            Some(None) => {}
        }
        let want = format!("${{{arg}}}");
        if image.labels.get(label) != Some(&want) {
            problems.push(format!("LABEL {label}={want} missing"));
        }
    }
    let module_dir = format!("/lib/modules/${{{KERNEL_ARG}}}/");
    problems.extend(check_staged_copy(
        image,
        "the staged module tree",
        &module_dir,
        |_| true,
        STAGED_MODULES,
        &[KERNEL_ARG, MODULE_ARG],
    ));

    // afsd: AFSD_DIR defaults to the tree of this module version, laid over /.
    match image.args.get(AFSD_DIR_ARG) {
        None => problems.push(format!(
            "no ARG {AFSD_DIR_ARG}: the afsd tree images/kmod/stage-afsd stages"
        )),
        Some(default) => {
            let default = default.as_deref().unwrap_or_default();
            if !references(default).iter().any(|r| r.name == MODULE_ARG) {
                problems.push(format!(
                    "ARG {AFSD_DIR_ARG}={default}: its default must depend on {MODULE_ARG} (afsd drives the module of its release)"
                ));
            }
        }
    }
    let reads_afsd_dir =
        |source: &String| references(source).iter().any(|r| r.name == AFSD_DIR_ARG);
    problems.extend(check_staged_copy(
        image,
        "the staged afsd tree",
        "/",
        reads_afsd_dir,
        STAGED_AFSD,
        &[MODULE_ARG],
    ));
    if !image.args.contains_key(AFSD_VERSION_ARG) {
        problems.push(format!("no ARG {AFSD_VERSION_ARG}"));
    }
    let want = format!("${{{AFSD_VERSION_ARG}}}");
    if image.labels.get(AFSD_LABEL) != Some(&want) {
        problems.push(format!("LABEL {AFSD_LABEL}={want} missing"));
    }
    problems
}

/// Exactly one COPY of `what` (sources `pick` selects) into `dest`, from under `staged`,
/// depending on each of `args` so that with any of them empty the source does not widen
/// to a directory holding the staged trees.
fn check_staged_copy(
    image: &Stage,
    what: &str,
    dest: &str,
    pick: impl Fn(&String) -> bool,
    staged: &str,
    args: &[&str],
) -> Vec<String> {
    let mut problems = Vec::new();
    let sources = image
        .copies
        .iter()
        .filter(|c| image_path(&c.dest) == image_path(dest))
        .flat_map(|c| c.sources.iter().filter(|s| pick(s)).map(move |s| (s, c)))
        .collect::<Vec<_>>();
    let [(source, copy)] = sources.as_slice() else {
        problems.push(format!(
            "expected exactly one COPY of {what} into {dest}, found {}",
            sources.len()
        ));
        return problems;
    };
    // The source with the build arguments' defaults (AFSD_DIR's) but not the required ones.
    let source = &resolve(source, &copy.scope).0;
    let nominal: Scope = [(KERNEL_ARG, "6.1.0-56-amd64"), (MODULE_ARG, "1.0.0")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Some(v.to_owned())))
        .collect();
    let staged_path = context_path(&substitute(source, &nominal).0).unwrap_or_default();
    if !staged_path.starts_with(&format!("{staged}/")) {
        problems.push(format!("{what} {source} is not under {staged}/"));
    }
    for arg in args {
        if !references(source).iter().any(|r| r.name == *arg) {
            problems.push(format!("{what} {source} does not depend on {arg}"));
            continue;
        }
        let mut empty = nominal.clone();
        empty.insert((*arg).to_owned(), Some(String::new()));
        let widened = context_path(&substitute(source, &empty).0).unwrap_or_default();
        if staged_path == widened || staged_path.starts_with(&format!("{widened}/")) {
            problems.push(format!(
                "with {arg} empty {what} {source} becomes {widened}/, which holds the staged trees: the build would copy them instead of failing"
            ));
        }
    }
    problems
}

/// The Dockerfiles under `images/`: (image name, path relative to the root).
fn dockerfiles(root: &Path) -> Vec<(String, String)> {
    let dir = root.join(IMAGES_DIR);
    let mut found: Vec<(String, String)> = walk(&dir)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name == DOCKERFILE || name == "Containerfile" || name.ends_with(".Dockerfile")
        })
        .map(|p| {
            let rel = p
                .strip_prefix(root)
                .expect("under the root")
                .to_string_lossy()
                .into_owned();
            let image = p
                .parent()
                .and_then(|d| d.strip_prefix(&dir).ok())
                .map(|d| d.to_string_lossy().into_owned())
                .unwrap_or_default();
            (image, rel)
        })
        .collect();
    found.sort();
    found
}

// ---------------------------------------------------------------------------------
// The repository's images

#[test]
fn every_requested_image_has_a_dockerfile() {
    let root = repo_root();
    let found: BTreeSet<String> = dockerfiles(&root)
        .into_iter()
        .map(|(image, _)| image)
        .collect();
    for (image, _) in POLICIES {
        assert!(
            found.contains(image),
            "no {IMAGES_DIR}/{image}/{DOCKERFILE}"
        );
    }
    assert!(
        found.iter().all(|image| !image.is_empty()),
        "a Dockerfile directly in {IMAGES_DIR}/: use {IMAGES_DIR}/<image>/{DOCKERFILE}"
    );
}

#[test]
fn every_dockerfile_names_what_exists() {
    let ws = workspace();
    let mut report = Vec::new();
    for (image, path) in dockerfiles(&ws.root) {
        let text = std::fs::read_to_string(ws.root.join(&path)).expect("readable Dockerfile");
        report.extend(
            check(&text, policy(&image), ws)
                .into_iter()
                .map(|p| format!("{path}: {p}")),
        );
    }
    assert!(
        report.is_empty(),
        "problems in the images:\n{}",
        report.join("\n")
    );
}

#[test]
fn the_staged_trees_are_git_ignored() {
    let root = repo_root();
    for tree in STAGED_TREES {
        let staged = Path::new(tree);
        let parent = staged.parent().expect("a parent");
        let name = staged.file_name().and_then(|n| n.to_str()).expect("a name");
        let ignore =
            std::fs::read_to_string(root.join(parent).join(".gitignore")).unwrap_or_default();
        assert!(
            ignore
                .lines()
                .map(str::trim)
                .any(|l| l == format!("/{name}/") || l == format!("{name}/")),
            "{}/.gitignore must ignore /{name}/ (kernel modules and afsd are build inputs, never committed)",
            parent.display()
        );
    }
}

#[test]
fn the_readme_names_every_dockerfile() {
    let root = repo_root();
    let readme =
        std::fs::read_to_string(root.join(IMAGES_DIR).join("README.md")).expect("images/README.md");
    let missing: Vec<String> = dockerfiles(&root)
        .into_iter()
        .map(|(_, path)| path)
        .filter(|path| !readme.contains(path.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "images/README.md does not mention {missing:?}"
    );
}

// ---------------------------------------------------------------------------------
// The images against the pod specs the operator builds

/// An SR using every image: a kmod mapping for one kernel, the CSI controller.
fn desired() -> Desired {
    let sr: SpecialResource = serde_json::from_value(json!({
        "apiVersion": "afs.csi.auristor.com/v1alpha1",
        "kind": "SpecialResource",
        "metadata": {"name": "group-1", "uid": "00000000-0000-0000-0000-000000000001"},
        "spec": {
            "namespace": "afs-group-1",
            "nodeSelector": {"auristor.com/auristorfs-group": "group-1"},
            "kmod": {
                "module": "kafs",
                "version": "1.0.0",
                "kernelMappings": [{
                    "literal": "6.1.0-56-amd64",
                    "containerImage": "registry.example/afs-kmod-${MODULE_VERSION}:${KERNEL_FULL_VERSION}"
                }]
            },
            "csi": {"image": "registry.example/afs-csi-driver", "version": "0.1.0", "cacheManager": "kafs", "allowedCells": ["example.com"]}
        }
    }))
    .expect("a valid SpecialResource");
    let revision = revision(&sr.spec);
    let kernels = ["6.1.0-56-amd64".to_owned()];
    build(&Inputs {
        sr: &sr,
        revision: &revision,
        kernels: &kernels,
        runs_controller: true,
        csi_driver_owners: &[],
    })
    .expect("objects build")
}

fn image_stage(image: &str) -> Stage {
    let path = repo_root().join(IMAGES_DIR).join(image).join(DOCKERFILE);
    let text = std::fs::read_to_string(&path).expect("readable Dockerfile");
    model(&text).0.image().cloned().expect("a stage")
}

/// The binary a container runs (its command, else the image's ENTRYPOINT) and its uid
/// (container, then pod security context, then the image's USER).
fn runs(image: &Stage, pod: &PodSpec, container: &Container) -> (Option<String>, Option<i64>) {
    let files = image_files(image, &repo_root());
    let program = match &container.command {
        Some(command) => command.first().cloned(),
        None => image.entrypoint.as_ref().map(|(_, argv)| argv[0].clone()),
    };
    let binary = program
        .and_then(|p| resolve_program(image, &files, &p))
        .map(|path| {
            files[&path]
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned()
        });
    let uid = container
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .or_else(|| pod.security_context.as_ref().and_then(|s| s.run_as_user))
        .or_else(|| {
            image
                .user
                .as_ref()
                .and_then(|(_, u)| numeric_user(u))
                .map(|(uid, _)| i64::from(uid))
        });
    (binary, uid)
}

fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
    pod.containers
        .iter()
        .find(|c| c.name == name)
        .expect("the container")
}

#[test]
fn the_operator_runs_each_image_as_it_is_built() {
    let desired = desired();
    let mut problems = Vec::new();

    let kmod = image_stage("kmod");
    let ds = desired.kmod_daemon_sets.first().expect("a kmod DaemonSet");
    let pod = ds.spec.template.spec.as_ref().expect("a pod spec");
    let (binary, uid) = runs(&kmod, pod, container(pod, "kmod-manager"));
    if binary.as_deref() != Some("kmod-manager") {
        problems.push(format!(
            "operator/src/objects/kmod.rs: the driver container's command {:?} does not find kmod-manager in images/kmod (PATH {:?})",
            container(pod, "kmod-manager").command,
            kmod.scope.get("PATH").cloned().flatten()
        ));
    }
    if uid != Some(0) {
        problems.push(format!("operator/src/objects/kmod.rs: the driver container runs as uid {uid:?}; loading modules needs 0"));
    }

    let csi = image_stage("csi-driver");
    let node = desired
        .csi_node_daemon_set
        .spec
        .template
        .spec
        .as_ref()
        .expect("a pod spec");
    let (binary, uid) = runs(&csi, node, container(node, "csi-driver"));
    if binary.as_deref() != Some("csi-driver") {
        problems
            .push("the CSI node plugin does not run csi-driver from images/csi-driver".to_owned());
    }
    // A privileged container's capabilities reach only uid 0: any other user gets an
    // empty effective set, and mount(2) fails with EPERM.
    if uid != Some(0) {
        problems.push(format!(
            "operator/src/objects/csi.rs: the CSI node plugin's csi-driver container runs as uid {uid:?} \
             (images/csi-driver's USER unless its pod spec overrides it); mounting needs uid 0: \
             set run_as_user: Some(0) in its security context"
        ));
    }

    let controller = desired.csi_controller.as_ref().expect("the CSI controller");
    let pod = controller.spec.template.spec.as_ref().expect("a pod spec");
    let (binary, uid) = runs(&csi, pod, container(pod, "csi-driver"));
    if binary.as_deref() != Some("csi-driver") {
        problems
            .push("the CSI controller does not run csi-driver from images/csi-driver".to_owned());
    }
    if uid.is_none_or(|uid| uid == 0) {
        problems.push(format!(
            "the CSI controller runs as uid {uid:?}; it needs no privilege and must not be root"
        ));
    }
    assert!(
        problems.is_empty(),
        "images and pod specs disagree:\n{}",
        problems.join("\n")
    );
}

/// The operator's own Deployment runs images/operator's entrypoint (it passes only
/// args) as the user the image names in its /etc/passwd.
#[test]
fn the_operator_deployment_runs_the_operator_image() {
    let text =
        std::fs::read_to_string(repo_root().join(OPERATOR_MANIFEST)).expect(OPERATOR_MANIFEST);
    let deployment = serde_norway::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).expect("valid YAML"))
        .find(|document| document["kind"] == "Deployment")
        .expect("a Deployment");
    let pod: PodSpec =
        serde_json::from_value(deployment["spec"]["template"]["spec"].clone()).expect("a pod spec");
    let operator = pod
        .containers
        .iter()
        .find(|c| {
            c.image
                .as_deref()
                .is_some_and(|i| i.contains("/afs-operator:"))
        })
        .expect("a container running the afs-operator image");
    let image = image_stage("operator");
    let image_uid = image
        .user
        .as_ref()
        .and_then(|(_, u)| numeric_user(u))
        .map(|(uid, _)| i64::from(uid));
    let (binary, uid) = runs(&image, &pod, operator);
    assert_eq!(
        binary.as_deref(),
        Some("afs-operator"),
        "{OPERATOR_MANIFEST}: the container's command must run afs-operator"
    );
    assert_eq!(
        uid, image_uid,
        "{OPERATOR_MANIFEST}: runs as uid {uid:?}, images/operator as {image_uid:?} (the user its /etc/passwd names)"
    );
}

// ---------------------------------------------------------------------------------
// The parser and the checker on their own

#[test]
fn continuations_join_and_comments_drop() {
    let text = "# syntax=docker/dockerfile:1\n\
                # a comment\n\
                FROM scratch\n\
                \n\
                LABEL a=1 \\\n\
                # a comment inside the instruction\n\
                \x20     b=\"two words\" \\\n\
                \n\
                \x20     c=3\n\
                copy x /y\n";
    let parsed = parse(text).expect("parses");
    let summary: Vec<(usize, &str, &str)> = parsed
        .iter()
        .map(|i| (i.line, i.keyword.as_str(), i.args.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (3, "FROM", "scratch"),
            (5, "LABEL", "a=1       b=\"two words\"       c=3"),
            (10, "COPY", "x /y"),
        ]
    );
    assert_eq!(
        pairs(&parsed[1].args).expect("pairs"),
        [
            ("a".to_owned(), Some("1".to_owned())),
            ("b".to_owned(), Some("two words".to_owned())),
            ("c".to_owned(), Some("3".to_owned())),
        ]
    );
}

#[test]
fn the_parser_refuses_what_it_does_not_know() {
    let cases = [
        ("FROM scratch\nLABEL a=1 \\\n", "past the end of the file"),
        ("FROM scratch\nFETCH x\n", "unknown instruction \"FETCH\""),
        ("# escape=`\nFROM scratch\n", "escape character"),
        ("FROM scratch\nUSER\n", "USER without arguments"),
    ];
    for (text, want) in cases {
        let e = parse(text).expect_err(text);
        assert!(e.contains(want), "{text:?}: {e}");
    }
    assert!(words("a \"b").is_err());
    assert_eq!(
        words(r#"a\ b "c\"d" 'e f'"#).expect("words"),
        ["a b", "c\"d", "e f"]
    );
    assert!(exec_form(r#"["/bin/x", "run"]"#).is_ok());
    assert!(
        exec_form("/bin/x run")
            .expect_err("shell form")
            .contains("/bin/sh")
    );
    assert!(
        exec_form("['/bin/x']")
            .expect_err("not JSON")
            .contains("JSON")
    );
}

#[test]
fn references_resolve_from_the_scope() {
    let scope: Scope = [("A", Some("1")), ("B", None), ("E", Some(""))]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.map(str::to_owned)))
        .collect();
    assert_eq!(
        substitute("x/${A}/$A", &scope),
        ("x/1/1".to_owned(), vec![])
    );
    assert_eq!(
        substitute("${B}/${C}", &scope),
        ("${B}/${C}".to_owned(), vec!["B".to_owned(), "C".to_owned()])
    );
    assert_eq!(
        substitute("${E:-d}|${A:+set}|${E:+set}|\\$A", &scope).0,
        "d|set||\\$A"
    );
}

/// A Dockerfile that passes, to keep the broken one below honest.
const GOOD: &str = r#"
FROM scratch
ARG BIN_DIR=target/x86_64-unknown-linux-musl/release
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="t" \
      org.opencontainers.image.description="d" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/afs-special-resource/afs-special-resource" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY images/rootfs/ /
COPY ${BIN_DIR}/csi-driver /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/csi-driver"]
"#;

#[test]
fn a_good_dockerfile_passes() {
    let problems = check(GOOD, policy("csi-driver"), workspace());
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn a_broken_dockerfile_is_caught() {
    let broken = r#"
FROM debian:bookworm
ARG BIN_DIR=target/x86_64-unknown-linux-musl/debug
ARG VERSION=9.9.9
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://example.org/elsewhere"
COPY ${BINDIR}/csi-driver /usr/local/bin/csi-driver
COPY ${BIN_DIR}/no-such-binary /usr/local/bin/no-such-binary
COPY images/no-such-file /etc/
COPY ../outside /etc/
COPY --from=builder /x /y
ADD https://example.org/x.tar.gz /
USER root
RUN make
ENTRYPOINT /usr/local/bin/csi-driver --mode node
"#;
    let problems = check(broken, policy("csi-driver"), workspace());
    let expected = [
        "FROM debian:bookworm: an image starts FROM scratch",
        "uses ${BINDIR}, which no ARG or ENV before it declares",
        "BINDIR without a default; only the staged trees",
        "\"no-such-binary\" is not a binary target of the workspace",
        "images carry release builds",
        "images/no-such-file does not exist in the repository",
        "../outside: not a path inside the build context",
        "--from=builder: not a stage of this file",
        "ADD https://example.org/x.tar.gz: a remote source",
        "USER root: use a numeric uid",
        "ENTRYPOINT \"/usr/local/bin/csi-driver --mode node\" is shell form",
        "the image has no ENTRYPOINT",
        "no LABEL org.opencontainers.image.title",
        "no LABEL org.opencontainers.image.licenses",
        "LABEL org.opencontainers.image.source=\"https://example.org/elsewhere\", but the workspace's repository",
    ];
    for want in expected {
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "expected a problem containing {want:?}; got:\n{}",
            problems.join("\n")
        );
    }
    // RUN in shell form over a non-scratch base is left to that base; here it is not.
    assert!(
        !problems.iter().any(|p| p.contains("RUN in shell form")),
        "{problems:#?}"
    );

    // One fault at a time in the good file.
    let faults = [
        (
            "USER 65532:65532",
            "USER 0:0",
            "must run as a non-root user",
        ),
        ("USER 65532:65532\n", "", "no USER"),
        (
            "USER 65532:65532",
            "USER 1234:65532",
            "id 1234 has no line in /etc/passwd",
        ),
        (
            "USER 65532:65532",
            "RUN make\nUSER 65532:65532",
            "RUN in shell form needs /bin/sh",
        ),
        (
            "/csi-driver",
            "/afs-operator",
            "this image is for csi-driver",
        ),
        (
            "VERSION=0.1.0",
            "VERSION=0.0.9",
            "ARG VERSION=0.0.9, but csi-driver is version",
        ),
        (
            "\"Apache-2.0\"",
            "\"MIT\"",
            "but csi-driver is licensed \"Apache-2.0\"",
        ),
        (
            "ENTRYPOINT [\"/usr/local/bin/csi-driver\"]",
            "ENTRYPOINT [\"csi-driver\"]",
            "ENTRYPOINT runs csi-driver, which no COPY",
        ),
    ];
    for (from, to, want) in faults {
        let text = GOOD.replace(from, to);
        assert_ne!(text, GOOD, "{from:?} is in GOOD");
        let problems = check(&text, policy("csi-driver"), workspace());
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "{from:?} -> {to:?}: expected {want:?}; got:\n{}",
            problems.join("\n")
        );
    }
    // A bare name runs from the image's PATH.
    let on_path = GOOD
        .replace(
            "ENTRYPOINT [\"/usr/local/bin/csi-driver\"]",
            "ENTRYPOINT [\"csi-driver\"]",
        )
        .replace("USER 65532", "ENV PATH=/usr/local/bin\nUSER 65532");
    assert_eq!(
        check(&on_path, policy("csi-driver"), workspace()),
        Vec::<String>::new()
    );
}

#[test]
fn a_kernel_image_that_could_copy_the_wrong_tree_is_caught() {
    let kmod = std::fs::read_to_string(repo_root().join("images/kmod/Dockerfile"))
        .expect("images/kmod/Dockerfile");
    let ws = workspace();
    assert!(check(&kmod, policy("kmod"), ws).is_empty());
    let find = |text: &str, want: &str| {
        let problems = check(text, policy("kmod"), ws);
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "expected {want:?}; got:\n{}",
            problems.join("\n")
        );
    };
    // The simple layout: an empty KERNEL_VERSION would copy every staged kernel.
    let line = kmod
        .lines()
        .find(|l| l.contains("/lib/modules/${KERNEL_VERSION}/ "))
        .expect("the module tree COPY");
    find(
        &kmod.replace(
            line,
            "COPY images/kmod/modules/${KERNEL_VERSION}/ /lib/modules/${KERNEL_VERSION}/",
        ),
        "with KERNEL_VERSION empty the staged module tree",
    );
    find(
        &kmod.replace(
            "ARG KERNEL_VERSION\n",
            "ARG KERNEL_VERSION=6.1.0-56-amd64\n",
        ),
        "must be required",
    );
    find(
        &kmod.replace("ARG MODULE_VERSION\n", ""),
        "uses ${MODULE_VERSION}, which no ARG or ENV before it declares",
    );
    find(
        &kmod.replace(
            "afs.csi.auristor.com/module-version=\"${MODULE_VERSION}\"",
            "afs.csi.auristor.com/module-version=\"1\"",
        ),
        "LABEL afs.csi.auristor.com/module-version=${MODULE_VERSION} missing",
    );
    find(
        &kmod.replace("USER 0:0", "USER 65532:65532"),
        "runs as root",
    );
    find(
        &kmod.replace(
            line,
            "COPY ${BIN_DIR}/${KERNEL_VERSION} /lib/modules/${KERNEL_VERSION}/",
        ),
        "only the staged trees",
    );

    // afsd: the tree of this module version, laid over /, never all staged trees.
    let afsd_dir = kmod
        .lines()
        .find(|l| l.starts_with("ARG AFSD_DIR="))
        .expect("ARG AFSD_DIR");
    let afsd_copy = kmod
        .lines()
        .find(|l| l.starts_with("COPY ${AFSD_DIR}"))
        .expect("the afsd COPY");
    find(
        &kmod.replace(afsd_dir, "ARG AFSD_DIR=images/kmod/afsd/${MODULE_VERSION}"),
        "with MODULE_VERSION empty the staged afsd tree",
    );
    find(
        &kmod.replace(afsd_dir, "ARG AFSD_DIR=images/kmod/afsd/1.0.0/root"),
        "its default must depend on MODULE_VERSION",
    );
    find(
        &kmod.replace(afsd_dir, "ARG AFSD_DIR=target/afsd/${MODULE_VERSION}/root"),
        "only the staged trees",
    );
    find(
        &kmod.replace(afsd_dir, "ARG AFSD_DIR=images/kmod/afsd/${MODULE_VERSION}/root\nARG AFSD_DIR=images/kmod/afsd/1.0.0/root"),
        "a staged tree must be selected by the required build argument MODULE_VERSION",
    );
    find(
        &kmod.replace(afsd_copy, ""),
        "expected exactly one COPY of the staged afsd tree into /, found 0",
    );
    find(
        &kmod.replace(
            "afs.csi.auristor.com/afsd-version=\"${AFSD_VERSION}\"",
            "afs.csi.auristor.com/afsd-version=\"\"",
        ),
        "LABEL afs.csi.auristor.com/afsd-version=${AFSD_VERSION} missing",
    );
}
