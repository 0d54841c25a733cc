//! bin/setupEnvironment and the argument-less commands keep the original interface and
//! fix its defects: an error never closes the admin's shell, leaves nothing exported and
//! changes no shell option.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const VALID: &str = r#"
apiVersion: afs.csi.auristor.com/v1alpha1
kind: SpecialResource
metadata:
  name: group-9
spec:
  namespace: afs-group-9
  nodeSelector: {auristor.com/auristorfs-group: group-9}
  kmod:
    module: yfs
    version: 2021.5.0
    kernelMappings:
      - regexp: '^6\.1\..*$'
        containerImage: registry.example.com/auristor-kmod-${MODULE_VERSION}:${KERNEL_FULL_VERSION}
    # The AFS client's yfs-client.conf (client.configDir /etc/yfs).
    mapVolumes:
      - {name: etc-yfs, target: /etc/yfs, configMap: {name: etc-yfs}}
  csi: {image: registry.example.com/auristorfs-csi, version: 1.0.0, allowedCells: [example.com]}
"#;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("sr.yaml"), VALID).expect("write sr");
        std::fs::write(
            dir.path().join("bad.yaml"),
            VALID.replace("afs-group-9", "Bad_NS"),
        )
        .expect("write bad sr");
        for script in ["create.sh", "delete.sh", "plain.sh"] {
            let path = dir.path().join(script);
            std::fs::write(&path, "#!/bin/sh\n").expect("write script");
            if script != "plain.sh" {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod");
            }
        }
        Self { dir }
    }

    /// Sources setupEnvironment in a bash that then reports it is still alive, its
    /// options, and what is exported.
    fn source(&self, shell_options: &str, args: &str) -> (Output, String, String) {
        let script = format!(
            r#"{shell_options}
before="$-|$(set -o)"
source {setup} {args}
status=$?
after="$-|$(set -o)"
echo "alive status=$status"
[ "$before" = "$after" ] && echo "options unchanged"
env | grep -E '^(SPECIAL_RESOURCE|CREATE_MAP|DELETE_MAP)_' | sort
"#,
            setup = repo().join("bin/setupEnvironment").display(),
        );
        let output = Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(self.dir.path())
            .env("AFSCTL", env!("CARGO_BIN_EXE_afsctl"))
            .env_remove("SPECIAL_RESOURCE_FILE")
            .output()
            .expect("bash runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output, stdout, stderr)
    }
}

#[test]
fn a_valid_group_exports_the_five_variables_with_absolute_paths() {
    let fixture = Fixture::new();
    let dir = fixture.dir.path().canonicalize().expect("dir");
    let (_, stdout, stderr) = fixture.source("", "sr.yaml ./create.sh delete.sh");
    assert!(stdout.contains("alive status=0"), "{stdout}\n{stderr}");
    assert!(stdout.contains("options unchanged"), "{stdout}");
    for line in [
        format!("SPECIAL_RESOURCE_FILE={}", dir.join("sr.yaml").display()),
        "SPECIAL_RESOURCE_NAME=group-9".to_owned(),
        "SPECIAL_RESOURCE_NAMESPACE=afs-group-9".to_owned(),
        format!("CREATE_MAP_COMMAND={}", dir.join("create.sh").display()),
        format!("DELETE_MAP_COMMAND={}", dir.join("delete.sh").display()),
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line} in:\n{stdout}");
    }
}

#[test]
fn errors_keep_the_shell_alive_and_export_nothing() {
    let fixture = Fixture::new();
    let cases = [
        ("", "sr.yaml create.sh", 2, "expected 3 arguments, got 2"),
        (
            "",
            "missing.yaml create.sh delete.sh",
            1,
            "'missing.yaml' does not exist",
        ),
        ("", "bad.yaml create.sh delete.sh", 1, "/spec/namespace"),
        (
            "",
            "sr.yaml plain.sh delete.sh",
            1,
            "'plain.sh' is not executable",
        ),
        (
            "",
            "sr.yaml create.sh nowhere.sh",
            1,
            "delete-maps script 'nowhere.sh' does not exist",
        ),
        // Shells with strict options survive too, and keep them.
        (
            "set -u",
            "bad.yaml create.sh delete.sh",
            1,
            "/spec/namespace",
        ),
        (
            "set -o pipefail",
            "sr.yaml create.sh",
            2,
            "usage: source bin/setupEnvironment",
        ),
    ];
    for (options, args, status, message) in cases {
        let (_, stdout, stderr) = fixture.source(options, args);
        assert!(
            stdout.contains(&format!("alive status={status}")),
            "{options} {args}: {stdout}\n{stderr}"
        );
        assert!(stdout.contains("options unchanged"), "{args}: {stdout}");
        assert!(
            stderr.contains(message),
            "{args}: expected {message:?} in {stderr}"
        );
        assert!(
            !stdout.contains("SPECIAL_RESOURCE_") && !stdout.contains("_MAP_COMMAND="),
            "{args}: nothing exported, got {stdout}"
        );
    }
}

#[test]
fn running_instead_of_sourcing_says_so() {
    let output = Command::new("bash")
        .arg(repo().join("bin/setupEnvironment"))
        .output()
        .expect("bash runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("must be sourced"));
}

#[test]
fn commands_without_an_environment_say_what_to_source() {
    for command in ["deploy", "undeploy", "redeploy"] {
        let output = Command::new(repo().join("bin").join(command))
            .env_remove("SPECIAL_RESOURCE_FILE")
            .env("AFSCTL", env!("CARGO_BIN_EXE_afsctl"))
            .output()
            .expect("runs");
        assert_eq!(output.status.code(), Some(2), "{command}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("source bin/setupEnvironment"),
            "{command}: {stderr}"
        );
    }
}

#[test]
fn validate_prints_name_and_namespace_for_scripts() {
    let fixture = Fixture::new();
    let output = Command::new(env!("CARGO_BIN_EXE_afsctl"))
        .args(["validate", "--shell"])
        .arg(fixture.dir.path().join("sr.yaml"))
        .output()
        .expect("runs");
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "group-9 afs-group-9\n"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_afsctl"))
        .arg("validate")
        .arg(fixture.dir.path().join("bad.yaml"))
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.yaml") && stderr.contains("/spec/namespace"),
        "{stderr}"
    );
}
