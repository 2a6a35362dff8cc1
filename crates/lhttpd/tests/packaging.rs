//! The repository's Dockerfile and systemd unit, checked as far as this machine can: the unit
//! by `systemd-analyze verify` against the real binary, both for the flags they give lhttpd
//! (run through `--check-config`), and the image for what makes it small and unprivileged. No
//! Docker engine runs here, so the image itself is not built.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

const LHTTPD: &str = env!("CARGO_BIN_EXE_lhttpd");

fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lhttpd-packaging-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs `lhttpd ARGS --check-config`: the flags a deployment passes, as start-up reads them.
fn check_flags(args: &[String]) {
    let out = Command::new(LHTTPD)
        .args(args)
        .arg("--check-config")
        .output()
        .expect("lhttpd runs");
    assert!(
        out.status.success(),
        "lhttpd {args:?} --check-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The JSON array of a Dockerfile instruction (`CMD ["--listen", "0.0.0.0:8081"]`).
fn exec_form(dockerfile: &str, instruction: &str) -> Vec<String> {
    let line = dockerfile
        .lines()
        .rfind(|l| l.starts_with(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("no {instruction} in the Dockerfile"));
    serde_json::from_str(&line[instruction.len()..])
        .unwrap_or_else(|e| panic!("{instruction} is not in exec form ({e}): {line}"))
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_lhttpd_unprivileged_in_another() {
    let dockerfile = repo_file("Dockerfile");
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(
        stages.len(),
        2,
        "a build stage and a runtime stage: {stages:?}"
    );
    assert!(stages[0].ends_with(" AS build"), "{}", stages[0]);
    assert!(
        stages[1].contains("-slim"),
        "a small runtime base: {}",
        stages[1]
    );
    let runtime = &dockerfile[dockerfile.find(stages[1]).unwrap()..];
    assert!(
        dockerfile.contains("cargo build --release --locked"),
        "the lock file decides the dependencies"
    );
    assert!(
        runtime.contains("COPY --from=build /src/target/release/lhttpd"),
        "only the binaries reach the image"
    );
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER in the runtime stage");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "runs as {user}"
    );
    // The image's command is one lhttpd accepts, on the port the image exposes.
    let entrypoint = exec_form(runtime, "ENTRYPOINT");
    assert_eq!(entrypoint, ["/usr/local/bin/lhttpd"]);
    let cmd = exec_form(runtime, "CMD");
    check_flags(&cmd);
    let exposed = runtime
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE");
    let listen = cmd
        .iter()
        .skip_while(|a| *a != "--listen")
        .nth(1)
        .expect("--listen in CMD");
    assert_eq!(
        listen.rsplit(':').next(),
        Some(exposed),
        "{listen} vs EXPOSE {exposed}"
    );
    let ignore = repo_file(".dockerignore");
    assert!(
        ignore.lines().any(|l| l == "target"),
        "the build context leaves target/ out"
    );
}

#[test]
fn the_systemd_unit_verifies_and_starts_lhttpd_with_flags_it_accepts() {
    let unit = repo_file("packaging/lhttpd.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/lhttpd"));
    let mut args: Vec<String> = words.map(str::to_owned).collect();
    assert!(unit.contains("\nDynamicUser=yes\n"), "never as root");
    assert!(unit.contains("\nKillSignal=SIGTERM\n"), "SIGTERM drains");
    assert!(
        unit.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"),
        "systemctl reload sends SIGHUP, which reloads"
    );
    // The configuration the unit names, made here from the embedded default.
    let config = scratch("lhttpd.toml");
    let printed = Command::new(LHTTPD).arg("--print-config").output().unwrap();
    std::fs::write(&config, &printed.stdout).unwrap();
    let at = args.iter().position(|a| a == "--config").expect("--config") + 1;
    args[at] = config.display().to_string();
    check_flags(&args);

    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("systemd-analyze (Debian package systemd) checks the unit");
    let local = scratch("lhttpd.service");
    std::fs::write(
        &local,
        unit.replace(exec, &format!("{LHTTPD} {}", args.join(" "))),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&local)
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );
}
