//! The images as built, where `tests/images.rs` reads only their Dockerfiles.
//! `images/build` exports each image as an OCI image layout under `$AFS_IMAGES_DIR`
//! (`csi-driver/`, `operator/`, `kmod/`) and writes `build.env` with the driver
//! container's build arguments; these tests read the layouts back (every blob's digest
//! and size verified, layers unpacked in memory with their whiteouts) and check what
//! `images/README.md` promises: the entrypoint, user, environment and labels, a
//! statically linked binary that needs nothing from the image, exactly the files the
//! image is made of, the driver container's module tree (its own `modules.dep` complete,
//! no `modprobe`) and its `afsd` with exactly the libraries the dynamic loader maps for
//! it (no shell), and a size budget. Each prints one line of figures.
//!
//! Opt-in like the cluster tests: without `AFS_IMAGES_DIR` every image test says how to
//! get the images and passes; with it, a missing or malformed layout fails. The checks
//! are pure functions over an [`Image`] in memory, so the unit tests at the end feed
//! them broken images (and broken layouts) in plain `cargo test`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;
use object::elf::{self, PT_DYNAMIC, PT_INTERP};
use object::read::elf::{Dyn as _, FileHeader, ProgramHeader};
use object::{Endianness, FileKind};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Where `images/build` leaves the layouts; bin/test passes it on.
const IMAGES_DIR_ENV: &str = "AFS_IMAGES_DIR";
/// `KERNEL_VERSION=...` and `MODULE_VERSION=...`: the driver container's build arguments.
const BUILD_ENV: &str = "build.env";
const KERNEL_ARG: &str = "KERNEL_VERSION";
const MODULE_ARG: &str = "MODULE_VERSION";

/// The OCI media types an image layout of these images may hold.
const LAYOUT_VERSION: &str = "1.0.0";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Bytes kept of a file: enough for an ELF header and its program headers.
const HEAD: u64 = 4096;
/// `afsd` and the libraries beside it are kept whole up to this size: their dynamic
/// sections are read.
const PROGRAM_WHOLE: u64 = 16 << 20;
/// Files the checks read whole (`/etc/passwd`, `/etc/group`, `modules.dep`) are kept up
/// to this size.
const WHOLE: u64 = 1 << 20;
const MB: u64 = 1_000_000;

/// The workspace's version and license (this crate inherits both).
const VERSION: &str = env!("CARGO_PKG_VERSION");
const LICENSE: &str = env!("CARGO_PKG_LICENSE");

const PASSWD: &str = "etc/passwd";
const GROUP: &str = "etc/group";
const BIN_DIR: &str = "usr/local/bin";
const PATH_ENV: &str = "PATH=/usr/local/bin";

const TITLE: &str = "org.opencontainers.image.title";
const DESCRIPTION: &str = "org.opencontainers.image.description";
const VERSION_LABEL: &str = "org.opencontainers.image.version";
const SOURCE: &str = "org.opencontainers.image.source";
const LICENSES: &str = "org.opencontainers.image.licenses";
const OCI_LABELS: [&str; 5] = [TITLE, DESCRIPTION, VERSION_LABEL, SOURCE, LICENSES];
const KERNEL_LABEL: &str = "afs.csi.auristor.com/kernel-version";
const MODULE_LABEL: &str = "afs.csi.auristor.com/module-version";
const KMOD_MANAGER_LABEL: &str = "afs.csi.auristor.com/kmod-manager-version";
const AFSD_LABEL: &str = "afs.csi.auristor.com/afsd-version";
/// `AFSD_VERSION=...` in `build.env`: the version of the package afsd came from.
const AFSD_ARG: &str = "AFSD_VERSION";

/// The AFS client's daemon in the driver container (`images/kmod/stage-afsd`): a
/// dynamically linked program with its loader and libraries.
const AFSD: &str = "usr/sbin/afsd";
/// The directories the dynamic loader searches without `ld.so.cache` (glibc's system
/// search path, Debian's multiarch layout), after the `<triplet>` of the architecture.
const LIBRARY_PATH: [&str; 4] = ["lib/{}", "usr/lib/{}", "lib", "usr/lib"];

/// The modules the driver container must carry: name and directory in the tree.
const REQUIRED_MODULES: [(&str, &str); 3] = [
    ("kafs", "kernel/fs/afs"),
    ("rxrpc", "kernel/net/rxrpc"),
    ("openafs", "extra"),
];
/// Compressed module suffixes and their magic numbers.
const MODULE_COMPRESSION: [(&str, &[u8]); 3] = [
    (".xz", b"\xfd7zXZ\0"),
    (".zst", b"\x28\xb5\x2f\xfd"),
    (".gz", b"\x1f\x8b"),
];
/// Programs an image must not carry, and why.
const FORBIDDEN_PROGRAMS: [(&str, &str); 10] = [
    ("modprobe", MODULE_TOOL),
    ("insmod", MODULE_TOOL),
    ("rmmod", MODULE_TOOL),
    ("depmod", MODULE_TOOL),
    ("modinfo", MODULE_TOOL),
    ("lsmod", MODULE_TOOL),
    ("kmod", MODULE_TOOL),
    ("busybox", SHELL),
    ("sh", SHELL),
    ("bash", SHELL),
];
const MODULE_TOOL: &str = "kmod-manager loads modules by itself";
const SHELL: &str = "nothing runs a shell in a scratch image";

// ---------------------------------------------------------------------------------
// The image in memory

/// One image as its layers unpack: the configuration and the final filesystem.
#[derive(Debug, Clone, Default)]
struct Image {
    /// The configuration blob (`architecture`, `os`, `config`, `rootfs`, ...).
    config: Value,
    /// Every path of the filesystem, relative to `/`, without a trailing `/`.
    files: BTreeMap<String, Entry>,
    /// The layer blobs' bytes, as stored and pulled.
    compressed: u64,
    /// The layers' bytes uncompressed (tar streams).
    unpacked: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink(String),
    /// Devices, FIFOs, ...: the tar entry type.
    Other(String),
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::File => f.write_str("file"),
            Kind::Dir => f.write_str("directory"),
            Kind::Symlink(target) => write!(f, "symlink to {target}"),
            Kind::Other(what) => f.write_str(what),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: Kind,
    mode: u32,
    size: u64,
    /// The whole file for the few the checks read (see [`keep`]), else its first
    /// [`HEAD`] bytes.
    data: Vec<u8>,
}

impl Image {
    /// A file the checks read whole, as text.
    fn text(&self, path: &str) -> Result<&str, String> {
        let entry = match self.files.get(path) {
            Some(entry) if entry.kind == Kind::File => entry,
            Some(entry) => return Err(format!("/{path} is a {}, not a file", entry.kind)),
            None => return Err(format!("/{path} is missing")),
        };
        if entry.data.len() as u64 != entry.size {
            return Err(format!(
                "/{path} is {} bytes, more than the {WHOLE} this test reads",
                entry.size
            ));
        }
        std::str::from_utf8(&entry.data).map_err(|e| format!("/{path} is not UTF-8 text: {e}"))
    }

    /// Everything but directories.
    fn file_count(&self) -> usize {
        self.files.values().filter(|e| e.kind != Kind::Dir).count()
    }

    /// `config.<key>`, the part of the configuration a runtime acts on.
    fn runtime(&self, key: &str) -> &Value {
        &self.config["config"][key]
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.runtime("Labels")[key].as_str()
    }
}

/// How many bytes of a file of `size` at `path` to keep.
fn keep(path: &str, size: u64) -> u64 {
    let whole = path.starts_with("etc/") || path.ends_with("/modules.dep");
    size.min(if whole {
        WHOLE
    } else if path == AFSD || in_library_dir(path) {
        PROGRAM_WHOLE
    } else {
        HEAD
    })
}

/// A path where shared libraries and the dynamic loader live (not the module tree).
fn in_library_dir(path: &str) -> bool {
    ["lib/", "lib64/", "usr/lib/", "usr/lib64/"]
        .iter()
        .any(|dir| path.starts_with(dir))
        && !path.starts_with("lib/modules/")
}

// ---------------------------------------------------------------------------------
// Reading an OCI image layout

#[derive(Debug, Clone, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: u64,
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// Passes bytes through, counting and hashing them.
struct Digesting<R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
}

impl<R: Read> Digesting<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads what is left, then gives `sha256:<hex>` and the byte count.
    fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((format!("sha256:{}", hex(&self.hash.finalize())), self.bytes))
    }
}

impl<R: Read> Read for Digesting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the image an OCI layout directory holds: `index.json` -> its first manifest
/// -> the configuration and the layers, every blob checked against its descriptor.
fn read_layout(dir: &Path) -> Result<Image, String> {
    if !dir.is_dir() {
        return Err("no such directory (images/build exports each image there)".to_owned());
    }
    let layout: Value = json_file(&dir.join("oci-layout"))?;
    if layout["imageLayoutVersion"] != LAYOUT_VERSION {
        return Err(format!(
            "oci-layout: imageLayoutVersion {}, want {LAYOUT_VERSION:?}",
            layout["imageLayoutVersion"]
        ));
    }
    let index: Index = json_file(&dir.join("index.json"))?;
    if index.schema_version != 2 {
        return Err(format!(
            "index.json: schemaVersion {}, want 2",
            index.schema_version
        ));
    }
    let first = index
        .manifests
        .first()
        .ok_or("index.json lists no manifest")?;
    if first.media_type != MANIFEST_TYPE {
        return Err(format!(
            "index.json: the first manifest is a {:?}, want {MANIFEST_TYPE}",
            first.media_type
        ));
    }
    let manifest: Manifest = json_blob(dir, first)?;
    if manifest.schema_version != 2
        || manifest
            .media_type
            .as_deref()
            .is_some_and(|t| t != MANIFEST_TYPE)
    {
        return Err(format!(
            "manifest {}: schemaVersion {} and mediaType {:?}, want 2 and {MANIFEST_TYPE}",
            first.digest, manifest.schema_version, manifest.media_type
        ));
    }
    if manifest.config.media_type != CONFIG_TYPE {
        return Err(format!(
            "manifest {}: the config is a {:?}, want {CONFIG_TYPE}",
            first.digest, manifest.config.media_type
        ));
    }
    let config: Value = json_blob(dir, &manifest.config)?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if manifest.layers.is_empty() || diff_ids.len() != manifest.layers.len() {
        return Err(format!(
            "{} layers in the manifest, {} rootfs.diff_ids in the config: want as many, at least one",
            manifest.layers.len(),
            diff_ids.len()
        ));
    }
    let mut image = Image {
        config,
        ..Image::default()
    };
    for (layer, diff_id) in manifest.layers.iter().zip(diff_ids) {
        let context = |e: String| format!("layer {}: {e}", layer.digest);
        let file = verified_blob(dir, layer)?;
        let decoded: Box<dyn Read> = match layer.media_type.as_str() {
            LAYER_TAR => Box::new(file),
            LAYER_GZIP => Box::new(MultiGzDecoder::new(file)),
            other => {
                return Err(context(format!(
                    "media type {other:?}: this test reads {LAYER_TAR} and {LAYER_GZIP}"
                )));
            }
        };
        let mut stream = Digesting::new(decoded);
        apply_layer(&mut image.files, &mut stream).map_err(context)?;
        let (digest, bytes) = stream.finish().map_err(|e| context(e.to_string()))?;
        if digest != diff_id {
            return Err(context(format!(
                "uncompressed it is {digest}, the config's diff_id says {diff_id}"
            )));
        }
        image.compressed += layer.size;
        image.unpacked += bytes;
    }
    Ok(image)
}

fn json_file<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn json_blob<T: for<'de> Deserialize<'de>>(dir: &Path, blob: &Descriptor) -> Result<T, String> {
    let mut bytes = Vec::new();
    verified_blob(dir, blob)?
        .read_to_end(&mut bytes)
        .map_err(|e| format!("blob {}: {e}", blob.digest))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("blob {} ({}): {e}", blob.digest, blob.media_type))
}

/// The blob a descriptor names, opened after its size and SHA-256 were checked.
fn verified_blob(dir: &Path, blob: &Descriptor) -> Result<BufReader<File>, String> {
    let hex = blob
        .digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| {
            format!(
                "digest {:?}: want sha256:<64 lowercase hex digits>",
                blob.digest
            )
        })?;
    let path = dir.join("blobs/sha256").join(hex);
    let open = || {
        File::open(&path)
            .map(BufReader::new)
            .map_err(|e| format!("blob {}: {}: {e}", blob.digest, path.display()))
    };
    let (digest, size) = Digesting::new(open()?)
        .finish()
        .map_err(|e| format!("blob {}: {e}", blob.digest))?;
    if size != blob.size {
        return Err(format!(
            "blob {}: {size} bytes, its descriptor says {}",
            blob.digest, blob.size
        ));
    }
    if digest != blob.digest {
        return Err(format!(
            "blob {}: its content hashes to {digest}",
            blob.digest
        ));
    }
    open()
}

/// A path inside the image, relative to `/` (`None`: the root itself).
fn image_path(raw: &Path) -> Result<Option<String>, String> {
    let mut parts = Vec::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => parts.push(
                part.to_str()
                    .ok_or_else(|| format!("{} is not UTF-8", raw.display()))?,
            ),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("{} leaves the image's root", raw.display()));
            }
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// Removes `path` and everything under it.
fn remove_tree(files: &mut BTreeMap<String, Entry>, path: &str) {
    files.remove(path);
    let prefix = format!("{path}/");
    files.retain(|k, _| !k.starts_with(&prefix));
}

/// Lays one layer (a tar stream) over `files`: its whiteouts remove what the layers
/// below hold, then its entries replace theirs.
fn apply_layer(files: &mut BTreeMap<String, Entry>, stream: impl Read) -> Result<(), String> {
    let mut archive = tar::Archive::new(stream);
    let mut added: BTreeMap<String, Entry> = BTreeMap::new();
    // (directory, None): opaque, hides the directory's lower content; (directory,
    // Some(name)): hides that one path.
    let mut whiteouts: Vec<(String, Option<String>)> = Vec::new();
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let raw = entry.path().map_err(|e| e.to_string())?.into_owned();
        let Some(path) = image_path(&raw)? else {
            continue;
        };
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", &path));
        if name == ".wh..wh..opq" {
            whiteouts.push((parent.to_owned(), None));
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            whiteouts.push((parent.to_owned(), Some(hidden.to_owned())));
            continue;
        }
        let header = entry.header();
        let mode = header.mode().map_err(|e| format!("{path}: {e}"))?;
        let link = || -> Result<String, String> {
            let target = entry
                .link_name()
                .map_err(|e| format!("{path}: {e}"))?
                .ok_or_else(|| format!("{path}: a link without a target"))?;
            Ok(target.to_string_lossy().into_owned())
        };
        let kind = match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink(link()?),
            tar::EntryType::Link => {
                // A hard link is the file it names, from this layer or one below.
                let target = image_path(Path::new(&link()?))?.unwrap_or_default();
                let file = added
                    .get(&target)
                    .or_else(|| files.get(&target))
                    .filter(|e| e.kind == Kind::File)
                    .ok_or_else(|| {
                        format!("{path}: hard link to {target}, not a file of this layer or below")
                    })?;
                let linked = Entry {
                    mode,
                    ..file.clone()
                };
                added.insert(path, linked);
                continue;
            }
            tar::EntryType::XGlobalHeader => continue,
            other => Kind::Other(format!("{other:?}")),
        };
        let size = entry.size();
        let mut data = Vec::new();
        (&mut entry)
            .take(keep(&path, size))
            .read_to_end(&mut data)
            .map_err(|e| format!("{path}: {e}"))?;
        added.insert(
            path,
            Entry {
                kind,
                mode,
                size,
                data,
            },
        );
    }
    for (dir, name) in whiteouts {
        match name {
            Some(name) if dir.is_empty() => remove_tree(files, &name),
            Some(name) => remove_tree(files, &format!("{dir}/{name}")),
            None if dir.is_empty() => files.clear(),
            None => {
                let prefix = format!("{dir}/");
                files.retain(|k, _| !k.starts_with(&prefix));
            }
        }
    }
    for (path, entry) in added {
        if entry.kind != Kind::Dir {
            remove_tree(files, &path);
        }
        files.insert(path, entry);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// What each image must be

#[derive(Debug, Clone)]
struct Spec {
    /// The layout's directory under `$AFS_IMAGES_DIR`.
    name: &'static str,
    /// The program the entrypoint runs, from `/usr/local/bin`.
    binary: &'static str,
    /// The image's `Cmd` (the entrypoint's default arguments); empty: none.
    cmd: Vec<&'static str>,
    user: &'static str,
    /// Labels and the values they must have, beyond [`OCI_LABELS`] being present.
    labels: Vec<(&'static str, String)>,
    /// The driver container's kernel: `/lib/modules/<kernel>/` is its module tree.
    kernel: Option<String>,
    /// The driver container carries `/usr/sbin/afsd` with its libraries.
    afsd: bool,
    /// Unpacked bytes: fewer than this.
    budget: u64,
}

fn csi_driver() -> Spec {
    Spec {
        name: "csi-driver",
        binary: "csi-driver",
        cmd: vec![],
        user: "65532:65532",
        labels: vec![(VERSION_LABEL, VERSION.to_owned())],
        kernel: None,
        afsd: false,
        budget: 40 * MB,
    }
}

fn operator() -> Spec {
    Spec {
        name: "operator",
        binary: "afs-operator",
        ..csi_driver()
    }
}

fn kmod(kernel: &str, module_version: &str, afsd_version: &str) -> Spec {
    Spec {
        name: "kmod",
        binary: "kmod-manager",
        cmd: vec!["run"],
        user: "0:0",
        labels: vec![
            (VERSION_LABEL, module_version.to_owned()),
            (KERNEL_LABEL, kernel.to_owned()),
            (MODULE_LABEL, module_version.to_owned()),
            (KMOD_MANAGER_LABEL, VERSION.to_owned()),
            (AFSD_LABEL, afsd_version.to_owned()),
        ],
        kernel: Some(kernel.to_owned()),
        afsd: true,
        budget: 80 * MB,
    }
}

impl Spec {
    fn binary_path(&self) -> String {
        format!("{BIN_DIR}/{}", self.binary)
    }

    fn module_tree(&self) -> Option<String> {
        self.kernel.as_ref().map(|k| format!("lib/modules/{k}"))
    }
}

/// Every problem of the image against its spec.
fn check(image: &Image, spec: &Spec) -> Vec<String> {
    let mut problems = check_config(image, spec);
    problems.extend(check_labels(image, spec));
    problems.extend(check_user_listed(image));
    problems.extend(check_binary(image, &spec.binary_path()));
    let afsd = if spec.afsd {
        let (files, afsd_problems) = afsd_closure(image);
        problems.extend(afsd_problems);
        files
    } else {
        BTreeSet::new()
    };
    problems.extend(check_files(image, spec, &afsd));
    problems.extend(check_no_other_programs(image, spec, &afsd));
    if let Some(kernel) = &spec.kernel {
        problems.extend(check_modules(image, kernel));
    }
    problems.extend(check_size(image, spec));
    problems
}

/// Entrypoint, arguments, user, environment and platform.
fn check_config(image: &Image, spec: &Spec) -> Vec<String> {
    let mut problems = Vec::new();
    let entrypoint = json!([format!("/{}", spec.binary_path())]);
    if *image.runtime("Entrypoint") != entrypoint {
        problems.push(format!(
            "Entrypoint {}, want {entrypoint}",
            image.runtime("Entrypoint")
        ));
    }
    let cmd = image.runtime("Cmd");
    let cmd_ok = if spec.cmd.is_empty() {
        cmd.is_null() || *cmd == json!([])
    } else {
        *cmd == json!(spec.cmd)
    };
    if !cmd_ok {
        problems.push(format!(
            "Cmd {cmd}, want {} (the entrypoint's default arguments)",
            json!(spec.cmd)
        ));
    }
    if image.runtime("User") != spec.user {
        problems.push(format!(
            "User {}, want {:?}",
            image.runtime("User"),
            spec.user
        ));
    }
    let has_path = image
        .runtime("Env")
        .as_array()
        .is_some_and(|env| env.iter().any(|v| v == PATH_ENV));
    if !has_path {
        problems.push(format!(
            "Env {} lacks {PATH_ENV} (the pod specs run commands by name)",
            image.runtime("Env")
        ));
    }
    if image.config["os"] != "linux" {
        problems.push(format!("os {}, want \"linux\"", image.config["os"]));
    }
    problems
}

/// The OCI labels every image carries, and the spec's exact ones.
fn check_labels(image: &Image, spec: &Spec) -> Vec<String> {
    let mut problems = Vec::new();
    for key in OCI_LABELS {
        if image.label(key).is_none_or(str::is_empty) {
            problems.push(format!("label {key} missing or empty"));
        }
    }
    let mut exact = spec.labels.clone();
    exact.push((LICENSES, LICENSE.to_owned()));
    for (key, want) in exact {
        match image.label(key) {
            Some(value) if value == want => {}
            value => problems.push(format!("label {key}={value:?}, want {want:?}")),
        }
    }
    if let Some(source) = image.label(SOURCE)
        && !source.starts_with("https://")
    {
        problems.push(format!("label {SOURCE}={source:?} is not an https URL"));
    }
    problems
}

/// The configured `uid:gid` has a line in `/etc/passwd` and `/etc/group`.
fn check_user_listed(image: &Image) -> Vec<String> {
    let user = image.runtime("User").as_str().unwrap_or_default();
    let Some((uid, gid)) = user.split_once(':') else {
        return vec![format!("User {user:?} is not numeric uid:gid")];
    };
    let mut problems = Vec::new();
    for (file, id, what) in [(PASSWD, uid, "uid"), (GROUP, gid, "gid")] {
        if id.parse::<u32>().is_err() {
            problems.push(format!("User {user:?}: {what} {id:?} is not a number"));
            continue;
        }
        match image.text(file) {
            Ok(text) => {
                if !text.lines().any(|line| line.split(':').nth(2) == Some(id)) {
                    problems.push(format!("/{file} has no line for the image's {what} {id}"));
                }
            }
            Err(e) => problems.push(e),
        }
    }
    problems
}

/// What the dynamic loader needs to know of an ELF file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Dynamic {
    /// `PT_INTERP`: the loader's path.
    interpreter: Option<String>,
    /// `DT_SONAME`.
    soname: Option<String>,
    /// `DT_NEEDED`, in order.
    needed: Vec<String>,
    /// `DT_RUNPATH` and `DT_RPATH`.
    search: Vec<String>,
}

/// Reads the interpreter and the dynamic section (through the section headers) of a
/// whole ELF file.
fn elf_dynamic(data: &[u8]) -> Result<Dynamic, String> {
    match FileKind::parse(data) {
        Ok(FileKind::Elf32) => elf_dynamic_of::<elf::FileHeader32<Endianness>>(data),
        Ok(FileKind::Elf64) => elf_dynamic_of::<elf::FileHeader64<Endianness>>(data),
        Ok(other) => Err(format!("a {other:?} file, not ELF")),
        Err(e) => Err(format!("not ELF ({e})")),
    }
}

fn elf_dynamic_of<H: FileHeader<Endian = Endianness>>(data: &[u8]) -> Result<Dynamic, String> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let header = H::parse(data).map_err(|e| e.to_string())?;
    let endian = header.endian().map_err(|e| e.to_string())?;
    let mut out = Dynamic::default();
    for segment in header
        .program_headers(endian, data)
        .map_err(|e| format!("program headers: {e}"))?
    {
        if let Some(path) = segment
            .interpreter(endian, data)
            .map_err(|e| e.to_string())?
        {
            out.interpreter = Some(text(path));
        }
    }
    let sections = header
        .sections(endian, data)
        .map_err(|e| format!("section headers: {e}"))?;
    let Some((entries, link)) = sections
        .dynamic(endian, data)
        .map_err(|e| format!("dynamic section: {e}"))?
    else {
        return Ok(out);
    };
    let strings = sections
        .strings(endian, data, link)
        .map_err(|e| format!("dynamic string table: {e}"))?;
    for entry in entries {
        let Some(tag) = entry.tag32(endian).filter(|_| entry.is_string(endian)) else {
            continue;
        };
        let value = text(
            entry
                .string(endian, strings)
                .map_err(|e| format!("dynamic section: {e}"))?,
        );
        match tag {
            elf::DT_NEEDED => out.needed.push(value),
            elf::DT_SONAME => out.soname = Some(value),
            elf::DT_RUNPATH | elf::DT_RPATH => out.search.push(value),
            _ => {}
        }
    }
    Ok(out)
}

/// The GNU triplet of an OCI architecture: Debian's library directories.
fn triplet(architecture: &str) -> Option<&'static str> {
    match architecture {
        "amd64" => Some("x86_64-linux-gnu"),
        "arm64" => Some("aarch64-linux-gnu"),
        _ => None,
    }
}

/// `afsd` runs in the image: an executable ELF file for the image's architecture whose
/// loader (`PT_INTERP`) and every library it needs (`DT_NEEDED`, recursively) are
/// regular files where the loader finds them without `ld.so.cache`: on its system search
/// path, or already loaded under that name (the loader itself is `libc.so.6`'s
/// `ld-linux-x86-64.so.2`). Gives those files (afsd included) and the problems.
fn afsd_closure(image: &Image) -> (BTreeSet<String>, Vec<String>) {
    let mut found = BTreeSet::new();
    let mut problems = Vec::new();
    let file = |path: &str| image.files.get(path).filter(|e| e.kind == Kind::File);
    let Some(entry) = image.files.get(AFSD) else {
        return (
            found,
            vec![format!(
                "/{AFSD} is missing (images/kmod/stage-afsd stages it; kmod-manager starts it for OpenAFS)"
            )],
        );
    };
    if entry.kind != Kind::File {
        return (
            found,
            vec![format!("/{AFSD} is a {}, not a file", entry.kind)],
        );
    }
    if entry.mode & 0o111 == 0 {
        problems.push(format!("/{AFSD} is not executable (mode {:o})", entry.mode));
    }
    let architecture = image.config["architecture"].as_str().unwrap_or_default();
    let Some(triplet) = triplet(architecture) else {
        problems.push(format!(
            "architecture {architecture:?}: this test knows amd64 and arm64"
        ));
        return (found, problems);
    };
    let search: Vec<String> = LIBRARY_PATH
        .iter()
        .map(|dir| dir.replace("{}", triplet))
        .collect();
    // Names the loader has mapped (file name and SONAME): a later DT_NEEDED of one is
    // satisfied without a search.
    let mut loaded = BTreeSet::new();
    let mut todo = std::collections::VecDeque::from([AFSD.to_owned()]);
    while let Some(path) = todo.pop_front() {
        if !found.insert(path.clone()) {
            continue;
        }
        let entry = &image.files[&path];
        if entry.data.len() as u64 != entry.size {
            problems.push(format!(
                "/{path} is {} bytes, more than the {PROGRAM_WHOLE} this test reads",
                entry.size
            ));
            continue;
        }
        let (info, dynamic) = match elf_info(&entry.data)
            .and_then(|info| elf_dynamic(&entry.data).map(|dynamic| (info, dynamic)))
        {
            Ok(both) => both,
            Err(e) => {
                problems.push(format!("/{path}: {e}"));
                continue;
            }
        };
        let want: &[u16] = if path == AFSD {
            &[elf::ET_EXEC, elf::ET_DYN]
        } else {
            &[elf::ET_DYN]
        };
        if !want.contains(&info.e_type) {
            problems.push(format!(
                "/{path}: ELF type {}, not {}",
                info.e_type,
                if path == AFSD {
                    "an executable"
                } else {
                    "a shared library"
                }
            ));
        }
        if machine(architecture) != Some(info.machine) {
            problems.push(format!(
                "/{path}: ELF machine {}, not the image's {architecture}",
                info.machine
            ));
        }
        if !dynamic.search.is_empty() {
            problems.push(format!(
                "/{path} has a RUNPATH/RPATH {:?}: this test (and stage-afsd) resolve libraries on the loader's system search path only",
                dynamic.search
            ));
        }
        loaded.extend(path.rsplit('/').next().map(str::to_owned));
        loaded.extend(dynamic.soname.clone());
        if let Some(interpreter) = &dynamic.interpreter {
            let at = interpreter.trim_start_matches('/').to_owned();
            if file(&at).is_some() {
                loaded.extend(at.rsplit('/').next().map(str::to_owned));
                todo.push_back(at);
            } else {
                problems.push(format!(
                    "/{path}: its loader {interpreter} (PT_INTERP) is missing from the image"
                ));
            }
        }
        for name in &dynamic.needed {
            if loaded.contains(name) {
                continue;
            }
            match search
                .iter()
                .map(|dir| format!("{dir}/{name}"))
                .find(|candidate| file(candidate).is_some())
            {
                Some(library) => {
                    loaded.insert(name.clone());
                    todo.push_back(library);
                }
                None => problems.push(format!(
                    "/{path} needs {name}, which is in none of /{} (the loader's search path)",
                    search.join(", /")
                )),
            }
        }
    }
    (found, problems)
}

/// What the ELF headers say about a binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ElfInfo {
    e_type: u16,
    machine: u16,
    /// A `PT_INTERP` program header: the binary needs a dynamic loader.
    interpreter: bool,
    /// A `PT_DYNAMIC` program header: the binary needs relocating or shared libraries.
    dynamic: bool,
}

/// Reads the ELF file header and program headers from the first bytes of a file.
fn elf_info(data: &[u8]) -> Result<ElfInfo, String> {
    match FileKind::parse(data) {
        Ok(FileKind::Elf32) => elf_info_of::<elf::FileHeader32<Endianness>>(data),
        Ok(FileKind::Elf64) => elf_info_of::<elf::FileHeader64<Endianness>>(data),
        Ok(other) => Err(format!("a {other:?} file, not ELF")),
        Err(e) => Err(format!("not ELF ({e})")),
    }
}

fn elf_info_of<H: FileHeader<Endian = Endianness>>(data: &[u8]) -> Result<ElfInfo, String> {
    let header = H::parse(data).map_err(|e| e.to_string())?;
    let endian = header.endian().map_err(|e| e.to_string())?;
    let segments = header.program_headers(endian, data).map_err(|e| {
        format!("program headers: {e} (this test reads them from the first {HEAD} bytes)")
    })?;
    let has = |wanted: u32| segments.iter().any(|p| p.p_type(endian) == wanted);
    Ok(ElfInfo {
        e_type: header.e_type(endian),
        machine: header.e_machine(endian),
        interpreter: has(PT_INTERP),
        dynamic: has(PT_DYNAMIC),
    })
}

/// The ELF machine of an OCI architecture.
fn machine(architecture: &str) -> Option<u16> {
    match architecture {
        "amd64" => Some(elf::EM_X86_64),
        "arm64" => Some(elf::EM_AARCH64),
        _ => None,
    }
}

/// The entrypoint's binary runs on an empty base: an executable ELF file for the
/// image's architecture, statically linked. Its absence is [`check_files`]' report.
fn check_binary(image: &Image, path: &str) -> Vec<String> {
    let Some(entry) = image.files.get(path) else {
        return vec![];
    };
    if entry.kind != Kind::File {
        return vec![format!("/{path} is a {}, not a file", entry.kind)];
    }
    let mut problems = Vec::new();
    if entry.mode & 0o111 == 0 {
        problems.push(format!("/{path} is not executable (mode {:o})", entry.mode));
    }
    let info = match elf_info(&entry.data) {
        Ok(info) => info,
        Err(e) => {
            problems.push(format!("/{path}: {e}"));
            return problems;
        }
    };
    if !matches!(info.e_type, elf::ET_EXEC | elf::ET_DYN) {
        problems.push(format!(
            "/{path}: ELF type {}, not an executable",
            info.e_type
        ));
    }
    if info.interpreter {
        problems.push(format!(
            "/{path} is dynamically linked (PT_INTERP): it needs a loader and libraries the scratch image lacks"
        ));
    }
    if info.dynamic {
        problems.push(format!(
            "/{path} has a dynamic section (PT_DYNAMIC): build it static and non-PIE (images/README.md)"
        ));
    }
    let architecture = image.config["architecture"].as_str().unwrap_or_default();
    match machine(architecture) {
        Some(want) if want == info.machine => {}
        Some(want) => problems.push(format!(
            "/{path}: ELF machine {}, the image's architecture {architecture} is {want}",
            info.machine
        )),
        None => problems.push(format!(
            "architecture {architecture:?}: this test knows amd64 and arm64"
        )),
    }
    problems
}

/// Exactly `/etc/passwd`, `/etc/group`, the binary, the directories above them and the
/// driver container's module tree and `afsd` with its libraries (`afsd`, found by
/// [`afsd_closure`]): nothing else, nothing missing.
fn check_files(image: &Image, spec: &Spec, afsd: &BTreeSet<String>) -> Vec<String> {
    let binary = spec.binary_path();
    let tree = spec.module_tree();
    let expected = [PASSWD, GROUP, binary.as_str()];
    let mut problems: Vec<String> = expected
        .iter()
        .filter(|path| !image.files.contains_key(**path))
        .map(|path| format!("/{path} is missing"))
        .collect();
    let mut allowed_dirs = BTreeSet::new();
    for path in expected
        .iter()
        .copied()
        .chain(tree.as_deref())
        .chain(afsd.iter().map(String::as_str))
    {
        let mut at = path;
        while let Some((parent, _)) = at.rsplit_once('/') {
            allowed_dirs.insert(parent);
            at = parent;
        }
    }
    let in_tree = |path: &str| {
        tree.as_deref().is_some_and(|t| {
            path == t
                || path
                    .strip_prefix(t)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    };
    // An unexpected directory is reported once, not with all it holds.
    let mut reported: Vec<String> = Vec::new();
    for (path, entry) in &image.files {
        if reported.iter().any(|dir| path.starts_with(dir)) {
            continue;
        }
        let ok = match entry.kind {
            Kind::Dir => allowed_dirs.contains(path.as_str()) || in_tree(path),
            Kind::File => expected.contains(&path.as_str()) || in_tree(path) || afsd.contains(path),
            _ => false,
        };
        if !ok {
            problems.push(format!("unexpected /{path} ({})", entry.kind));
            if entry.kind == Kind::Dir {
                reported.push(format!("{path}/"));
            }
        }
    }
    match tree {
        Some(tree) if image.files.get(&tree).is_none_or(|e| e.kind != Kind::Dir) => {
            problems.push(format!(
                "/{tree}/ is missing: no module tree for the image's kernel"
            ));
        }
        _ => {}
    }
    problems
}

/// The entrypoint's binary (and the driver container's `afsd` with the libraries it
/// needs, `afsd`) are the image's only programs: no module tools, no shell, no other
/// executable or library (kernel modules are ELF relocatable files).
fn check_no_other_programs(image: &Image, spec: &Spec, afsd: &BTreeSet<String>) -> Vec<String> {
    let binary = spec.binary_path();
    let mut problems = Vec::new();
    for (path, entry) in &image.files {
        let name = path.rsplit('/').next().unwrap_or(path);
        if entry.kind == Kind::Dir
            || *path == binary
            || (afsd.contains(path) && !FORBIDDEN_PROGRAMS.iter().any(|(p, _)| *p == name))
        {
            continue;
        }
        if let Some((_, why)) = FORBIDDEN_PROGRAMS.iter().find(|(p, _)| *p == name) {
            problems.push(format!("/{path}: no {name} in the image ({why})"));
        } else if entry.data.starts_with(b"#!") {
            problems.push(format!(
                "/{path} is a script; a scratch image has no interpreter"
            ));
        } else if let Ok(info) = elf_info(&entry.data)
            && info.e_type != elf::ET_REL
        {
            problems.push(format!(
                "/{path} is an ELF executable or library (type {}); only {}{} should be",
                info.e_type,
                spec.binary,
                if spec.afsd {
                    " and afsd with the libraries it needs"
                } else {
                    ""
                }
            ));
        }
    }
    problems
}

/// The file name of module `name`: `name.ko`, maybe compressed.
fn is_module_file(file_name: &str, name: &str) -> bool {
    file_name
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix(".ko"))
        .is_some_and(|rest| rest.is_empty() || MODULE_COMPRESSION.iter().any(|(s, _)| *s == rest))
}

/// The driver container's module tree: its `modules.dep` names only modules the image
/// carries and every module it carries, the AFS modules are there, and each module file
/// is what its name says.
fn check_modules(image: &Image, kernel: &str) -> Vec<String> {
    let tree = format!("lib/modules/{kernel}");
    let dep_path = format!("{tree}/modules.dep");
    let dep = match image.text(&dep_path) {
        Ok(text) => text,
        Err(e) => return vec![format!("{e} (kmod-manager reads it to load modules)")],
    };
    let mut problems = Vec::new();
    let mut listed = BTreeSet::new();
    let mut lacking = BTreeSet::new();
    for (number, line) in dep.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((module, deps)) = line.split_once(':') else {
            problems.push(format!("/{dep_path} line {}: no ':'", number + 1));
            continue;
        };
        for name in std::iter::once(module.trim()).chain(deps.split_whitespace()) {
            let path = match name.strip_prefix('/') {
                Some(absolute) => absolute.to_owned(),
                None => format!("{tree}/{name}"),
            };
            if image.files.get(&path).is_none_or(|e| e.kind != Kind::File) {
                lacking.insert(path.clone());
            }
            listed.insert(path);
        }
    }
    for path in lacking {
        problems.push(format!("/{dep_path} lists /{path}, which the image lacks"));
    }
    for (name, dir) in REQUIRED_MODULES {
        let prefix = format!("{tree}/{dir}/");
        let found: Vec<&String> = image
            .files
            .keys()
            .filter(|p| {
                p.strip_prefix(&prefix)
                    .is_some_and(|file| is_module_file(file, name))
            })
            .collect();
        match found.as_slice() {
            [] => problems.push(format!("no {name}.ko* in /{prefix}")),
            paths => {
                for path in paths.iter().filter(|p| !listed.contains(**p)) {
                    problems.push(format!("/{path} is not in /{dep_path}"));
                }
            }
        }
    }
    for (path, entry) in image.files.range(format!("{tree}/")..) {
        if !path.starts_with(&format!("{tree}/")) {
            break;
        }
        let name = path.rsplit('/').next().unwrap_or(path);
        if entry.kind != Kind::File || !name.contains(".ko") {
            continue;
        }
        if !listed.contains(path) {
            problems.push(format!(
                "/{path} is not in /{dep_path}: kmod-manager cannot load it"
            ));
        }
        if name.ends_with(".ko") {
            match elf_info(&entry.data) {
                Ok(info) if info.e_type == elf::ET_REL => {}
                Ok(info) => problems.push(format!(
                    "/{path}: ELF type {}, a kernel module is relocatable",
                    info.e_type
                )),
                Err(e) => problems.push(format!("/{path}: {e}")),
            }
        } else if let Some((suffix, magic)) =
            MODULE_COMPRESSION.iter().find(|(s, _)| name.ends_with(s))
        {
            if !entry.data.starts_with(magic) {
                problems.push(format!("/{path} does not start like a {suffix} file"));
            }
        } else {
            problems.push(format!(
                "/{path}: not a module name this test knows (.ko, .ko.xz, .ko.zst, .ko.gz)"
            ));
        }
    }
    problems
}

/// The unpacked layers stay under the budget (generous: a binary that doubles fails).
fn check_size(image: &Image, spec: &Spec) -> Vec<String> {
    if image.unpacked < spec.budget {
        return vec![];
    }
    vec![format!(
        "{} bytes unpacked, the budget is {} MB",
        image.unpacked,
        spec.budget / MB
    )]
}

/// The line each image test prints.
fn figures(name: &str, image: &Image) -> String {
    format!(
        "image {name}: {} compressed, {} unpacked, {} files",
        image.compressed,
        image.unpacked,
        image.file_count()
    )
}

// ---------------------------------------------------------------------------------
// The built images (opt-in)

/// `$AFS_IMAGES_DIR`, or `None` when unset: the test is then skipped with a word on how
/// to run it.
fn images_dir(test: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os(IMAGES_DIR_ENV) else {
        eprintln!(
            "skipping {test}: {IMAGES_DIR_ENV} is not set. Run images/build (it builds the images and \
             exports them to a directory), then run the tests with {IMAGES_DIR_ENV} set to it (bin/test does)"
        );
        return None;
    };
    assert!(
        !dir.is_empty(),
        "{IMAGES_DIR_ENV} is set but empty; unset it to skip these tests"
    );
    Some(PathBuf::from(dir))
}

/// `KEY=VALUE` lines (blank lines and `#` comments allowed, values maybe quoted).
fn parse_build_env(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: {line:?} is not KEY=VALUE", number + 1))?;
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        out.insert(key.trim().to_owned(), unquoted.to_owned());
    }
    Ok(out)
}

fn check_built(dir: &Path, spec: &Spec) {
    let layout = dir.join(spec.name);
    let image = read_layout(&layout)
        .unwrap_or_else(|e| panic!("image {}: {}: {e}", spec.name, layout.display()));
    eprintln!("{}", figures(spec.name, &image));
    let problems = check(&image, spec);
    assert!(
        problems.is_empty(),
        "image {} ({}):\n{}",
        spec.name,
        layout.display(),
        problems.join("\n")
    );
}

#[test]
fn the_built_csi_driver_image() {
    if let Some(dir) = images_dir("the_built_csi_driver_image") {
        check_built(&dir, &csi_driver());
    }
}

#[test]
fn the_built_operator_image() {
    if let Some(dir) = images_dir("the_built_operator_image") {
        check_built(&dir, &operator());
    }
}

#[test]
fn the_built_kmod_image() {
    let Some(dir) = images_dir("the_built_kmod_image") else {
        return;
    };
    let path = dir.join(BUILD_ENV);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (images/build writes it)", path.display()));
    let env = parse_build_env(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let arg = |key: &str| {
        env.get(key)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| panic!("{}: no {key}=<value>", path.display()))
    };
    check_built(&dir, &kmod(arg(KERNEL_ARG), arg(MODULE_ARG), arg(AFSD_ARG)));
}

// ---------------------------------------------------------------------------------
// The checks and the reader on hand-made images

const KERNEL: &str = "6.1.0-56-amd64";
const MODULE_VERSION: &str = "1.0.0";
const AFSD_VERSION: &str = "1.8.9-1+deb12u1";
const LOADER: &str = "lib64/ld-linux-x86-64.so.2";
const LIBC: &str = "lib/x86_64-linux-gnu/libc.so.6";
const PASSWD_TEXT: &str = "root:x:0:0:root:/root:/sbin/nologin\n\
                           nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n";
const GROUP_TEXT: &str = "root:x:0:\nnonroot:x:65532:\n";

/// A 64-bit little-endian x86-64 ELF header with program headers of these types.
fn fake_elf(e_type: u16, segments: &[u32]) -> Vec<u8> {
    let mut out = b"\x7fELF".to_vec();
    // 64-bit, little-endian, ELF version 1, System V ABI, padding.
    out.extend([2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    out.extend(e_type.to_le_bytes());
    out.extend(elf::EM_X86_64.to_le_bytes());
    out.extend(1u32.to_le_bytes());
    out.extend(0x40_1000u64.to_le_bytes()); // e_entry
    out.extend(64u64.to_le_bytes()); // e_phoff: right after this header
    out.extend(0u64.to_le_bytes()); // e_shoff: no section headers
    out.extend(0u32.to_le_bytes()); // e_flags
    let phnum = u16::try_from(segments.len()).expect("a few segments");
    for half in [64u16, 56, phnum, 64, 0, 0] {
        out.extend(half.to_le_bytes());
    }
    for p_type in segments {
        out.extend(p_type.to_le_bytes());
        out.extend([0; 52]);
    }
    out
}

/// A 64-bit x86-64 ELF file as the loader sees it: `PT_INTERP` naming `interpreter`
/// (if any), `PT_DYNAMIC`, and section headers for its dynamic section and string table
/// with `DT_SONAME`, `DT_NEEDED` and `DT_RUNPATH` entries.
fn fake_dynamic_elf(
    e_type: u16,
    interpreter: Option<&str>,
    soname: Option<&str>,
    needed: &[&str],
    runpath: Option<&str>,
) -> Vec<u8> {
    let segments: Vec<u32> = interpreter
        .map(|_| elf::PT_INTERP)
        .into_iter()
        .chain([elf::PT_DYNAMIC])
        .collect();
    let mut out = fake_elf(e_type, &segments);
    // The string table: "\0" then each string; the dynamic entries point into it.
    let mut strings = vec![0u8];
    let mut entries: Vec<(u64, u64)> = Vec::new();
    let mut string = |s: &str| {
        let at = strings.len() as u64;
        strings.extend(s.bytes().chain([0]));
        at
    };
    for (tag, value) in soname
        .map(|s| (elf::DT_SONAME, s))
        .into_iter()
        .chain(needed.iter().map(|n| (elf::DT_NEEDED, *n)))
        .chain(runpath.map(|r| (elf::DT_RUNPATH, r)))
    {
        entries.push((u64::from(tag), string(value)));
    }
    entries.push((u64::from(elf::DT_NULL), 0));
    let interp_at = out.len() as u64;
    let interp: Vec<u8> = interpreter
        .map(|i| i.bytes().chain([0]).collect())
        .unwrap_or_default();
    out.extend(&interp);
    let strings_at = out.len() as u64;
    out.extend(&strings);
    while !out.len().is_multiple_of(8) {
        out.push(0);
    }
    let dynamic_at = out.len() as u64;
    for (tag, value) in &entries {
        out.extend(tag.to_le_bytes());
        out.extend(value.to_le_bytes());
    }
    let dynamic_size = out.len() as u64 - dynamic_at;
    // Program headers (fake_elf left them zeroed after p_type): offset and file size.
    let mut segment = |index: usize, offset: u64, size: u64| {
        let at = 64 + 56 * index;
        out[at + 8..at + 16].copy_from_slice(&offset.to_le_bytes());
        out[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
    };
    if interpreter.is_some() {
        segment(0, interp_at, interp.len() as u64);
    }
    segment(segments.len() - 1, dynamic_at, dynamic_size);
    // Section headers: null, .dynstr, .dynamic (linked to .dynstr).
    let shoff = out.len() as u64;
    let section = |sh_type: u32, offset: u64, size: u64, link: u32, entsize: u64| {
        let mut h = Vec::with_capacity(64);
        h.extend(0u32.to_le_bytes()); // sh_name
        h.extend(sh_type.to_le_bytes());
        h.extend(0u64.to_le_bytes()); // sh_flags
        h.extend(0u64.to_le_bytes()); // sh_addr
        h.extend(offset.to_le_bytes());
        h.extend(size.to_le_bytes());
        h.extend(link.to_le_bytes());
        h.extend(0u32.to_le_bytes()); // sh_info
        h.extend(8u64.to_le_bytes()); // sh_addralign
        h.extend(entsize.to_le_bytes());
        h
    };
    out.extend(section(elf::SHT_NULL, 0, 0, 0, 0));
    out.extend(section(
        elf::SHT_STRTAB,
        strings_at,
        strings.len() as u64,
        0,
        0,
    ));
    out.extend(section(elf::SHT_DYNAMIC, dynamic_at, dynamic_size, 1, 16));
    out[40..48].copy_from_slice(&shoff.to_le_bytes()); // e_shoff
    out[60..62].copy_from_slice(&3u16.to_le_bytes()); // e_shnum
    out[62..64].copy_from_slice(&1u16.to_le_bytes()); // e_shstrndx: names in .dynstr
    out
}

/// afsd as Debian builds it: a PIE needing libc.
fn fake_afsd() -> Vec<u8> {
    fake_dynamic_elf(
        elf::ET_DYN,
        Some("/lib64/ld-linux-x86-64.so.2"),
        None,
        &["libc.so.6"],
        None,
    )
}

/// A shared library named `soname` needing `needed`.
fn fake_library(soname: &str, needed: &[&str]) -> Vec<u8> {
    fake_dynamic_elf(elf::ET_DYN, None, Some(soname), needed, None)
}

fn static_binary() -> Vec<u8> {
    fake_elf(
        elf::ET_EXEC,
        &[elf::PT_LOAD, elf::PT_LOAD, elf::PT_GNU_STACK],
    )
}

fn file(data: &[u8], mode: u32) -> Entry {
    Entry {
        kind: Kind::File,
        mode,
        size: data.len() as u64,
        data: data.to_vec(),
    }
}

fn dir() -> Entry {
    Entry {
        kind: Kind::Dir,
        mode: 0o755,
        size: 0,
        data: vec![],
    }
}

/// An image that passes its spec.
fn good(spec: &Spec) -> Image {
    let labels: serde_json::Map<String, Value> = OCI_LABELS
        .iter()
        .map(|k| (k.to_string(), json!("x")))
        .chain([
            (
                SOURCE.to_owned(),
                json!("https://github.com/afs-special-resource/afs-special-resource"),
            ),
            (LICENSES.to_owned(), json!(LICENSE)),
        ])
        .chain(spec.labels.iter().map(|(k, v)| (k.to_string(), json!(v))))
        .collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": spec.user,
            "Env": [PATH_ENV],
            "Entrypoint": [format!("/{}", spec.binary_path())],
            "Cmd": if spec.cmd.is_empty() { Value::Null } else { json!(spec.cmd) },
            "Labels": labels,
        },
    });
    let mut files: BTreeMap<String, Entry> = ["etc", "usr", "usr/local", BIN_DIR]
        .into_iter()
        .map(|d| (d.to_owned(), dir()))
        .collect();
    files.insert(PASSWD.to_owned(), file(PASSWD_TEXT.as_bytes(), 0o644));
    files.insert(GROUP.to_owned(), file(GROUP_TEXT.as_bytes(), 0o644));
    files.insert(spec.binary_path(), file(&static_binary(), 0o755));
    if let Some(tree) = spec.module_tree() {
        let module = fake_elf(elf::ET_REL, &[]);
        for d in ["lib", "lib/modules", &tree] {
            files.insert(d.to_owned(), dir());
        }
        for d in [
            "kernel",
            "kernel/fs",
            "kernel/fs/afs",
            "kernel/net",
            "kernel/net/rxrpc",
            "extra",
        ] {
            files.insert(format!("{tree}/{d}"), dir());
        }
        for m in [
            "kernel/fs/afs/kafs.ko",
            "kernel/net/rxrpc/rxrpc.ko",
            "extra/openafs.ko",
        ] {
            files.insert(format!("{tree}/{m}"), file(&module, 0o644));
        }
        let dep = "kernel/fs/afs/kafs.ko: kernel/net/rxrpc/rxrpc.ko\n\
                   kernel/net/rxrpc/rxrpc.ko:\n\
                   extra/openafs.ko:\n";
        files.insert(format!("{tree}/modules.dep"), file(dep.as_bytes(), 0o644));
    }
    if spec.afsd {
        // As stage-afsd stages it: regular files at the paths ldd names.
        for d in ["lib", "lib/x86_64-linux-gnu", "lib64", "usr/sbin"] {
            files.insert(d.to_owned(), dir());
        }
        files.insert(AFSD.to_owned(), file(&fake_afsd(), 0o755));
        let loader = fake_library("ld-linux-x86-64.so.2", &[]);
        files.insert(LOADER.to_owned(), file(&loader, 0o755));
        let libc = fake_library("libc.so.6", &["ld-linux-x86-64.so.2"]);
        files.insert(LIBC.to_owned(), file(&libc, 0o755));
    }
    let unpacked = files.values().map(|e| e.size + 512).sum();
    Image {
        config,
        files,
        compressed: unpacked / 2,
        unpacked,
    }
}

fn all_specs() -> [Spec; 3] {
    [
        csi_driver(),
        operator(),
        kmod(KERNEL, MODULE_VERSION, AFSD_VERSION),
    ]
}

#[test]
fn good_images_pass() {
    for spec in all_specs() {
        let image = good(&spec);
        assert_eq!(check(&image, &spec), Vec::<String>::new(), "{}", spec.name);
        assert_eq!(
            image.file_count(),
            if spec.kernel.is_some() { 10 } else { 3 }
        );
    }
}

/// One change to a good image.
enum Fault {
    Runtime(&'static str, Value),
    Label(&'static str, Option<&'static str>),
    /// A top-level key of the configuration (`os`, `architecture`).
    Platform(&'static str, &'static str),
    Put(String, Entry),
    Remove(String),
    Mode(String, u32),
    Unpacked(u64),
    All(Vec<Fault>),
}

impl Fault {
    fn apply(self, image: &mut Image) {
        match self {
            Fault::Runtime(key, value) => image.config["config"][key] = value,
            Fault::Label(key, value) => {
                let labels = image.config["config"]["Labels"]
                    .as_object_mut()
                    .expect("labels");
                match value {
                    Some(v) => labels.insert(key.to_owned(), json!(v)),
                    None => labels.remove(key),
                };
            }
            Fault::Platform(key, value) => image.config[key] = json!(value),
            Fault::Put(path, entry) => {
                image.files.insert(path, entry);
            }
            Fault::Remove(path) => {
                image.files.remove(&path);
            }
            Fault::Mode(path, mode) => image.files.get_mut(&path).expect("a file").mode = mode,
            Fault::Unpacked(bytes) => image.unpacked = bytes,
            Fault::All(faults) => faults.into_iter().for_each(|f| f.apply(image)),
        }
    }
}

/// Each fault, applied to a good image of `spec`, gives a problem containing its text.
fn expect_problems(spec: &Spec, cases: Vec<(Fault, &str)>) {
    for (fault, want) in cases {
        let mut image = good(spec);
        fault.apply(&mut image);
        let problems = check(&image, spec);
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "{}: expected a problem containing {want:?}; got:\n{}",
            spec.name,
            problems.join("\n")
        );
    }
}

fn put(path: &str, entry: Entry) -> Fault {
    Fault::Put(path.to_owned(), entry)
}

/// A path in the good driver container's module tree.
fn in_tree(path: &str) -> String {
    format!("lib/modules/{KERNEL}/{path}")
}

#[test]
fn configuration_faults_are_caught() {
    use Fault::{Label, Platform, Runtime};
    let version = format!("version=Some(\"0.0.9\"), want {VERSION:?}");
    expect_problems(
        &csi_driver(),
        vec![
            (
                Runtime("User", json!("0:0")),
                "User \"0:0\", want \"65532:65532\"",
            ),
            (
                Runtime("User", json!("1000:1000")),
                "no line for the image's uid 1000",
            ),
            (
                Runtime("User", json!("65532:7")),
                "no line for the image's gid 7",
            ),
            (Runtime("User", json!("nonroot")), "not numeric uid:gid"),
            (
                Runtime("Entrypoint", json!(["/bin/sh", "-c", "x"])),
                "Entrypoint [\"/bin/sh\"",
            ),
            (
                Runtime("Entrypoint", json!(["csi-driver"])),
                "want [\"/usr/local/bin/csi-driver\"]",
            ),
            (
                Runtime("Cmd", json!(["--help"])),
                "Cmd [\"--help\"], want []",
            ),
            (
                Runtime("Env", json!(["PATH=/bin"])),
                "lacks PATH=/usr/local/bin",
            ),
            (Platform("os", "windows"), "os \"windows\""),
            (
                Label(TITLE, None),
                "label org.opencontainers.image.title missing",
            ),
            (Label(DESCRIPTION, Some("")), "description missing or empty"),
            (Label(VERSION_LABEL, Some("0.0.9")), &version),
            (Label(LICENSES, Some("MIT")), "licenses=Some(\"MIT\")"),
            (Label(SOURCE, Some("git@example.org:x")), "not an https URL"),
        ],
    );
    expect_problems(
        &kmod(KERNEL, MODULE_VERSION, AFSD_VERSION),
        vec![
            (Runtime("Cmd", Value::Null), "Cmd null, want [\"run\"]"),
            (Runtime("User", json!("65532:65532")), "want \"0:0\""),
            (
                Label(KERNEL_LABEL, Some("6.1.0-55-amd64")),
                "kernel-version=Some(\"6.1.0-55",
            ),
            (
                Label(MODULE_LABEL, None),
                "module-version=None, want \"1.0.0\"",
            ),
            (Label(VERSION_LABEL, Some(VERSION)), "image.version=Some"),
            (
                Label(KMOD_MANAGER_LABEL, Some("9")),
                "kmod-manager-version=Some(\"9\")",
            ),
            (
                Label(AFSD_LABEL, None),
                "afsd-version=None, want \"1.8.9-1+deb12u1\"",
            ),
        ],
    );
}

#[test]
fn binary_faults_are_caught() {
    let spec = operator();
    let binary = spec.binary_path();
    let program = |data: &[u8]| put(&binary, file(data, 0o755));
    let dynamic = fake_elf(
        elf::ET_DYN,
        &[elf::PT_PHDR, elf::PT_INTERP, elf::PT_DYNAMIC],
    );
    let static_pie = fake_elf(elf::ET_DYN, &[elf::PT_LOAD, elf::PT_DYNAMIC]);
    let mut cases = vec![
        (program(&dynamic), "dynamically linked (PT_INTERP)"),
        (program(&static_pie), "has a dynamic section (PT_DYNAMIC)"),
        (
            program(&fake_elf(elf::ET_REL, &[])),
            "ELF type 1, not an executable",
        ),
        (program(b"#!/bin/sh\nexec true\n"), "not ELF"),
        (program(b""), "not ELF"),
        (
            Fault::Mode(binary.clone(), 0o644),
            "is not executable (mode 644)",
        ),
        (Fault::Platform("architecture", "arm64"), "ELF machine 62"),
        (
            Fault::Platform("architecture", "s390x"),
            "this test knows amd64",
        ),
        (
            Fault::Remove(binary.clone()),
            "/usr/local/bin/afs-operator is missing",
        ),
    ];
    // A real dynamically linked program, as much of it as the reader keeps.
    if let Ok(bytes) = std::fs::read("/bin/true") {
        let size = bytes.len() as u64;
        let data = bytes[..keep(&binary, size) as usize].to_vec();
        let entry = Entry {
            size,
            data,
            ..file(b"", 0o755)
        };
        cases.push((put(&binary, entry), "dynamically linked (PT_INTERP)"));
    }
    expect_problems(&spec, cases);
}

#[test]
fn file_faults_are_caught() {
    let program = file(&static_binary(), 0o755);
    let link = Entry {
        kind: Kind::Symlink("/x".to_owned()),
        ..dir()
    };
    expect_problems(
        &csi_driver(),
        vec![
            (Fault::Remove(PASSWD.to_owned()), "/etc/passwd is missing"),
            (Fault::Remove(GROUP.to_owned()), "/etc/group is missing"),
            (put("bin", dir()), "unexpected /bin (directory)"),
            (put("bin/sh", program.clone()), "unexpected /bin/sh (file)"),
            (put("bin/sh", program.clone()), "no sh in the image"),
            (
                put("usr/local/bin/run", file(b"#!/bin/sh\n", 0o755)),
                "is a script",
            ),
            (put("etc/ssl", link), "unexpected /etc/ssl (symlink to /x)"),
            (
                put("usr/local/bin/x", program.clone()),
                "is an ELF executable or library",
            ),
            // A module tree is the driver container's alone.
            (put("lib", dir()), "unexpected /lib (directory)"),
            (Fault::Unpacked(40 * MB), "the budget is 40 MB"),
        ],
    );
    expect_problems(
        &kmod(KERNEL, MODULE_VERSION, AFSD_VERSION),
        vec![(Fault::Unpacked(80 * MB + 1), "the budget is 80 MB")],
    );
}

#[test]
fn module_tree_faults_are_caught() {
    let spec = kmod(KERNEL, MODULE_VERSION, AFSD_VERSION);
    let module = file(&fake_elf(elf::ET_REL, &[]), 0o644);
    let dep = in_tree("modules.dep");
    let dep_of = |text: &str| put(&dep, file(text.as_bytes(), 0o644));
    let without_openafs =
        "kernel/fs/afs/kafs.ko: kernel/net/rxrpc/rxrpc.ko\nkernel/net/rxrpc/rxrpc.ko:\n";
    expect_problems(
        &spec,
        vec![
            (Fault::Remove(dep.clone()), "modules.dep is missing"),
            (
                dep_of("kernel/fs/afs/kafs.ko kernel/net/rxrpc/rxrpc.ko\n"),
                "line 1: no ':'",
            ),
            (
                Fault::Remove(in_tree("kernel/net/rxrpc/rxrpc.ko")),
                "lists /lib/modules/6.1.0-56-amd64/kernel/net/rxrpc/rxrpc.ko, which the image lacks",
            ),
            (
                Fault::Remove(in_tree("kernel/fs/afs/kafs.ko")),
                "no kafs.ko* in /lib/modules/6.1.0-56-amd64/kernel/fs/afs/",
            ),
            (
                Fault::All(vec![
                    Fault::Remove(in_tree("extra/openafs.ko")),
                    dep_of(without_openafs),
                ]),
                "no openafs.ko* in /lib/modules/6.1.0-56-amd64/extra/",
            ),
            (dep_of(without_openafs), "extra/openafs.ko is not in"),
            (
                put(&in_tree("extra/yfs.ko"), module.clone()),
                "extra/yfs.ko is not in",
            ),
            (
                put(&in_tree("extra/openafs.ko"), file(&static_binary(), 0o644)),
                "a kernel module is relocatable",
            ),
            (
                put(&in_tree("kernel/fs/afs/kafs.ko.xz"), file(b"xz?", 0o644)),
                "not start like a .xz",
            ),
            (
                put(&in_tree("extra/x.ko.bz2"), file(b"BZh", 0o644)),
                "not a module name this test",
            ),
            (
                put(&in_tree("sbin/modprobe"), file(b"\0", 0o755)),
                "no modprobe in the image",
            ),
            (put("sbin/kmod", file(b"\0", 0o755)), "no kmod in the image"),
            (
                put("lib/modules/6.1.0-55-amd64", dir()),
                "unexpected /lib/modules/6.1.0-55-amd64",
            ),
        ],
    );

    // The image's tree is for another kernel than build.env names.
    let problems = check(
        &good(&spec),
        &kmod("6.1.0-55-amd64", MODULE_VERSION, AFSD_VERSION),
    );
    let want = "/lib/modules/6.1.0-55-amd64/ is missing";
    assert!(problems.iter().any(|p| p.contains(want)), "{problems:#?}");

    // Compressed modules pass when modules.dep names them.
    let mut image = good(&spec);
    Fault::All(vec![
        Fault::Remove(in_tree("kernel/fs/afs/kafs.ko")),
        put(
            &in_tree("kernel/fs/afs/kafs.ko.zst"),
            file(b"\x28\xb5\x2f\xfd...", 0o644),
        ),
        dep_of("kernel/fs/afs/kafs.ko.zst:\nkernel/net/rxrpc/rxrpc.ko:\nextra/openafs.ko:\n"),
    ])
    .apply(&mut image);
    assert_eq!(check(&image, &spec), Vec::<String>::new());
}

#[test]
fn afsd_faults_are_caught() {
    let spec = kmod(KERNEL, MODULE_VERSION, AFSD_VERSION);
    let library = |soname: &str, needed: &[&str]| file(&fake_library(soname, needed), 0o755);
    let afsd_with = |data: Vec<u8>| put(AFSD, file(&data, 0o755));
    let truncated = {
        let mut entry = file(&fake_afsd(), 0o755);
        entry.size = PROGRAM_WHOLE + 1;
        entry
    };
    expect_problems(
        &spec,
        vec![
            (Fault::Remove(AFSD.to_owned()), "/usr/sbin/afsd is missing"),
            (
                Fault::Remove(LIBC.to_owned()),
                "/usr/sbin/afsd needs libc.so.6, which is in none of /lib/x86_64-linux-gnu, /usr/lib/x86_64-linux-gnu, /lib, /usr/lib",
            ),
            (
                Fault::Remove(LOADER.to_owned()),
                "its loader /lib64/ld-linux-x86-64.so.2 (PT_INTERP) is missing",
            ),
            // A library nothing needs, and one that is not where the loader looks.
            (
                put(
                    "lib/x86_64-linux-gnu/libextra.so.1",
                    library("libextra.so.1", &[]),
                ),
                "unexpected /lib/x86_64-linux-gnu/libextra.so.1 (file)",
            ),
            (
                put(
                    "lib/x86_64-linux-gnu/libextra.so.1",
                    library("libextra.so.1", &[]),
                ),
                "only kmod-manager and afsd with the libraries it needs should be",
            ),
            (
                Fault::All(vec![
                    Fault::Remove(LIBC.to_owned()),
                    put("opt/lib/libc.so.6", library("libc.so.6", &[])),
                ]),
                "needs libc.so.6, which is in none of",
            ),
            // A library's own dependency.
            (
                put(LIBC, library("libc.so.6", &["libcrypt.so.1"])),
                "/lib/x86_64-linux-gnu/libc.so.6 needs libcrypt.so.1",
            ),
            (
                afsd_with(fake_dynamic_elf(
                    elf::ET_DYN,
                    Some("/lib64/ld-linux-x86-64.so.2"),
                    None,
                    &["libc.so.6"],
                    Some("$ORIGIN/../lib"),
                )),
                "has a RUNPATH/RPATH [\"$ORIGIN/../lib\"]",
            ),
            (
                afsd_with(fake_dynamic_elf(elf::ET_REL, None, None, &[], None)),
                "/usr/sbin/afsd: ELF type 1, not an executable",
            ),
            (
                put(LIBC, file(&static_binary(), 0o755)),
                "libc.so.6: ELF type 2, not a shared library",
            ),
            (
                afsd_with(b"#!/bin/sh\n".to_vec()),
                "/usr/sbin/afsd: not ELF",
            ),
            (Fault::Mode(AFSD.to_owned(), 0o644), "is not executable"),
            (
                put(AFSD, truncated),
                "more than the 16777216 this test reads",
            ),
            (
                put(
                    AFSD,
                    Entry {
                        kind: Kind::Symlink("/bin/true".to_owned()),
                        ..dir()
                    },
                ),
                "/usr/sbin/afsd is a symlink to /bin/true, not a file",
            ),
            // afsd's closure never brings a shell.
            (
                put("bin/sh", file(&static_binary(), 0o755)),
                "/bin/sh: no sh in the image",
            ),
            (
                put("lib/x86_64-linux-gnu/sh", library("sh", &[])),
                "no sh in the image",
            ),
        ],
    );
    // The loader finds libraries on its whole search path, and the interpreter under
    // its name.
    let mut image = good(&spec);
    Fault::All(vec![
        Fault::Remove(LIBC.to_owned()),
        Fault::Remove("lib/x86_64-linux-gnu".to_owned()),
        put("usr/lib", dir()),
        put("usr/lib/x86_64-linux-gnu", dir()),
        put(
            "usr/lib/x86_64-linux-gnu/libc.so.6",
            library("libc.so.6", &["ld-linux-x86-64.so.2"]),
        ),
    ])
    .apply(&mut image);
    assert_eq!(check(&image, &spec), Vec::<String>::new());
    // afsd belongs to the driver container only.
    let mut csi = good(&csi_driver());
    put(AFSD, file(&fake_afsd(), 0o755)).apply(&mut csi);
    let problems = check(&csi, &csi_driver());
    assert!(
        problems.iter().any(|p| p.contains("unexpected /usr/sbin")),
        "{problems:#?}"
    );
}

#[test]
fn a_real_program_reads_as_the_loader_sees_it() {
    // This host's own dynamically linked programs, whole.
    let Ok(bytes) = std::fs::read("/bin/true") else {
        return;
    };
    let dynamic = elf_dynamic(&bytes).expect("/bin/true parses");
    assert!(
        dynamic
            .interpreter
            .as_deref()
            .is_some_and(|i| i.contains("ld-")),
        "{dynamic:?}"
    );
    assert!(
        dynamic.needed.iter().any(|n| n.starts_with("libc.so")),
        "{dynamic:?}"
    );
    let fake = elf_dynamic(&fake_afsd()).expect("the fake parses");
    assert_eq!(
        fake,
        Dynamic {
            interpreter: Some("/lib64/ld-linux-x86-64.so.2".to_owned()),
            soname: None,
            needed: vec!["libc.so.6".to_owned()],
            search: vec![],
        }
    );
}

#[test]
fn build_env_parses() {
    let env = parse_build_env(
        "# from images/build\nKERNEL_VERSION=6.1.0-56-amd64\n\nMODULE_VERSION=\"1.0.0\"\n",
    )
    .expect("parses");
    assert_eq!(env.get(KERNEL_ARG).map(String::as_str), Some(KERNEL));
    assert_eq!(
        env.get(MODULE_ARG).map(String::as_str),
        Some(MODULE_VERSION)
    );
    assert!(parse_build_env("KERNEL_VERSION\n").is_err());
}

// The layout reader

enum TarEntry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    HardLink(&'a str, &'a str),
}

fn tar_of(entries: &[TarEntry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o755);
        let (path, data): (&str, &[u8]) = match entry {
            TarEntry::Dir(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                (path, b"")
            }
            TarEntry::File(path, data) => (path, data),
            TarEntry::HardLink(path, target) => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_link_name(target).expect("a short link name");
                (path, b"")
            }
        };
        header.set_size(data.len() as u64);
        builder
            .append_data(&mut header, path, data)
            .expect("append");
    }
    builder.into_inner().expect("a tar")
}

/// A tar of one empty file whose name the builder would refuse.
fn tar_with_raw_name(name: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_mode(0o644);
    header.set_size(0);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, io::empty()).expect("append");
    builder.into_inner().expect("a tar")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// Stores a blob and gives its descriptor.
fn put_blob(dir: &Path, media_type: &str, bytes: &[u8]) -> Value {
    let digest = sha256(bytes);
    let name = digest.trim_start_matches("sha256:");
    std::fs::write(dir.join("blobs/sha256").join(name), bytes).expect("write a blob");
    json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
}

/// Writes a layout of one image: layers as (media type, blob, diff_id).
fn write_layout(dir: &Path, layers: &[Layer]) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("mkdir");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
    let descriptors: Vec<Value> = layers
        .iter()
        .map(|(t, blob, _)| put_blob(dir, t, blob))
        .collect();
    let diff_ids: Vec<&String> = layers.iter().map(|(_, _, id)| id).collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"User": "65532:65532"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = put_blob(dir, CONFIG_TYPE, config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": config,
        "layers": descriptors,
    });
    let manifest = put_blob(dir, MANIFEST_TYPE, manifest.to_string().as_bytes());
    let index = json!({"schemaVersion": 2, "manifests": [manifest]});
    std::fs::write(dir.join("index.json"), index.to_string()).expect("write");
}

/// Two layers: a gzip one with a file tree, a plain one that whites out and links.
fn two_layers() -> Vec<Layer> {
    let lower = tar_of(&[
        TarEntry::Dir("./"),
        TarEntry::Dir("etc/"),
        TarEntry::File("etc/passwd", PASSWD_TEXT.as_bytes()),
        TarEntry::Dir("opt/"),
        TarEntry::File("opt/old", b"old"),
        TarEntry::Dir("var/"),
        TarEntry::File("var/a", b"a"),
        TarEntry::File("var/b", b"b"),
        TarEntry::Dir("usr/"),
        TarEntry::File("usr/x", &[7; 10_000]),
    ]);
    let upper = tar_of(&[
        TarEntry::File("opt/.wh.old", b""),
        TarEntry::Dir("var/"),
        TarEntry::File("var/.wh..wh..opq", b""),
        TarEntry::File("var/c", b"c"),
        TarEntry::HardLink("usr/y", "usr/x"),
    ]);
    vec![
        (LAYER_GZIP, gzip(&lower), sha256(&lower)),
        (LAYER_TAR, upper.clone(), sha256(&upper)),
    ]
}

#[test]
fn a_layout_reads_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let layers = two_layers();
    write_layout(tmp.path(), &layers);
    let image = read_layout(tmp.path()).expect("reads");
    let paths: Vec<&str> = image.files.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        [
            "etc",
            "etc/passwd",
            "opt",
            "usr",
            "usr/x",
            "usr/y",
            "var",
            "var/c"
        ]
    );
    assert_eq!(image.text(PASSWD), Ok(PASSWD_TEXT));
    let x = &image.files["usr/x"];
    assert_eq!((x.size, x.data.len() as u64), (10_000, HEAD));
    assert_eq!(image.files["usr/y"].size, 10_000);
    assert_eq!(
        image.compressed,
        (layers[0].1.len() + layers[1].1.len()) as u64
    );
    assert_eq!(
        image.unpacked,
        (gunzipped_len(&layers[0].1) + layers[1].1.len()) as u64
    );
    assert_eq!(image.config["config"]["User"], "65532:65532");
    assert_eq!(
        figures("t", &image),
        format!(
            "image t: {} compressed, {} unpacked, 4 files",
            image.compressed, image.unpacked
        )
    );
}

fn gunzipped_len(blob: &[u8]) -> usize {
    let mut out = Vec::new();
    MultiGzDecoder::new(blob)
        .read_to_end(&mut out)
        .expect("gunzip");
    out.len()
}

type Layer = (&'static str, Vec<u8>, String);

/// Reads a layout of [`two_layers`] after the faults: one on the layers before they are
/// written, one on the files after.
fn layout_error(
    layer_fault: impl FnOnce(&mut Vec<Layer>),
    file_fault: impl FnOnce(&Path),
) -> String {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut layers = two_layers();
    layer_fault(&mut layers);
    write_layout(tmp.path(), &layers);
    file_fault(tmp.path());
    read_layout(tmp.path()).expect_err("a malformed layout")
}

#[test]
fn a_malformed_layout_fails() {
    let upper = two_layers().remove(1).1;
    let upper_blob = |dir: &Path| {
        dir.join("blobs/sha256")
            .join(&sha256(&upper)["sha256:".len()..])
    };
    let cases: Vec<(String, &str)> = vec![
        (
            layout_error(
                |l| l[1].0 = "application/vnd.oci.image.layer.v1.tar+zstd",
                |_| {},
            ),
            "media type \"application/vnd.oci.image.layer.v1.tar+zstd\"",
        ),
        (
            layout_error(|l| l[1].2 = sha256(b"other"), |_| {}),
            "the config's diff_id says",
        ),
        // gzip read as tar, tar read as gzip.
        (
            layout_error(|l| l[0].0 = LAYER_TAR, |_| {}),
            "layer sha256:",
        ),
        (
            layout_error(|l| l[1].0 = LAYER_GZIP, |_| {}),
            "layer sha256:",
        ),
        (
            layout_error(
                |l| {
                    l[1].1 = tar_with_raw_name(b"../escape");
                    l[1].2 = sha256(&l[1].1);
                },
                |_| {},
            ),
            "leaves the image's root",
        ),
        (
            layout_error(
                |l| {
                    l[1].1 = tar_of(&[TarEntry::HardLink("usr/z", "usr/none")]);
                    l[1].2 = sha256(&l[1].1);
                },
                |_| {},
            ),
            "hard link to usr/none, not a file",
        ),
        (layout_error(Vec::clear, |_| {}), "0 layers in the manifest"),
        (
            layout_error(
                |_| {},
                |dir| {
                    let mut bytes = upper.clone();
                    bytes[600] ^= 1;
                    std::fs::write(upper_blob(dir), bytes).expect("corrupt");
                },
            ),
            "its content hashes to",
        ),
        (
            layout_error(
                |_| {},
                |dir| std::fs::write(upper_blob(dir), &upper[..512]).expect("truncate"),
            ),
            "512 bytes, its descriptor says",
        ),
        (
            layout_error(
                |_| {},
                |dir| std::fs::remove_file(upper_blob(dir)).expect("remove"),
            ),
            "No such file",
        ),
        (
            layout_error(
                |_| {},
                |dir| std::fs::remove_file(dir.join("index.json")).expect("remove"),
            ),
            "index.json",
        ),
        (
            layout_error(
                |_| {},
                |dir| {
                    std::fs::write(
                        dir.join("index.json"),
                        r#"{"schemaVersion":2,"manifests":[]}"#,
                    )
                    .expect("write")
                },
            ),
            "index.json lists no manifest",
        ),
        (
            layout_error(
                |_| {},
                |dir| std::fs::write(dir.join("oci-layout"), "{}").expect("write"),
            ),
            "imageLayoutVersion",
        ),
        (
            read_layout(Path::new("/nonexistent/afs-images/csi-driver")).expect_err("no layout"),
            "no such directory",
        ),
    ];
    for (error, want) in cases {
        assert!(error.contains(want), "expected {want:?}, got {error:?}");
    }
}
