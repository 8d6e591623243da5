//! Another commit's `worker`, built once and cached, to measure beside the working tree's in
//! one sitting (`bench compare --base REV`): only ratios within one run mean anything on a
//! shared machine, and a cold release build takes minutes on two cores.
//!
//! The commit's files are exported with `git archive` (no worktree left behind) and built with
//! its own `Cargo.lock` into `target/bench-baseline/target`, shared by every baseline so a second
//! one reuses most dependencies; the binary is kept as `target/bench-baseline/<sha>/worker`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::stack::Build;

/// The worker of commit `rev` (anything `git rev-parse` takes), building it if no cached binary
/// exists.
pub fn build(rev: &str) -> anyhow::Result<Build> {
    let sha = git(&["rev-parse", "--verify", &format!("{rev}^{{commit}}")])?;
    let root = baseline_root()?;
    let dir = root.join(&sha);
    let binary = dir.join("worker");
    let label = format!("{} ({rev})", &sha[..sha.len().min(10)]);
    if binary.exists() {
        eprintln!("baseline {label}: cached at {}", binary.display());
        return Ok(Build { label, binary });
    }
    eprintln!("baseline {label}: building (minutes when cold)");
    let source = dir.join("src");
    if source.exists() {
        std::fs::remove_dir_all(&source)?;
    }
    std::fs::create_dir_all(&source)?;
    export(&sha, &source)?;
    let target = root.join("target");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--locked", "-p", "worker"])
        .current_dir(&source)
        .env("CARGO_TARGET_DIR", &target)
        .stdin(Stdio::null())
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!(
            "building {label} failed ({status}); its sources are in {}",
            source.display()
        );
    }
    std::fs::copy(target.join("release").join("worker"), &binary)?;
    std::fs::remove_dir_all(&source)?;
    Ok(Build { label, binary })
}

/// `git archive SHA | tar -x -C DIR`.
fn export(sha: &str, dir: &Path) -> anyhow::Result<()> {
    let mut archive = Command::new("git")
        .args(["archive", "--format=tar", sha])
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let stdout = archive.stdout.take().context("git archive's output")?;
    let untar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dir)
        .stdin(stdout)
        .status()
        .context("running tar")?;
    let archived = archive.wait()?;
    if !archived.success() || !untar.success() {
        bail!("exporting {sha} failed (git archive {archived}, tar {untar})");
    }
    Ok(())
}

/// `target/bench-baseline`, beside the profile folder the bench runs from.
fn baseline_root() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let target = me
        .parent()
        .and_then(Path::parent)
        .context("the bench runs from target/<profile>/")?;
    Ok(target.join("bench-baseline"))
}

fn git(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("git")
        .args(args)
        .output()
        .context("running git")?;
    if !output.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}
