//! CUDA MPS for slots that share a GPU. Worker processes on one GPU otherwise take turns on
//! it (time-slicing: one process's kernels at a time), so a second slot adds little when
//! each process's kernels leave most of the card idle, as packs of a few trials do (the N-D
//! study's packs of 3 seeds: 4 slots on an H200 trained 12 trials at 24 it/s each, what one
//! pack of 4 alone does in total). Under an MPS server the processes' kernels run side by
//! side.
//!
//! The run starts its own control daemon (`nvidia-cuda-mps-control -d`) with its pipe and
//! log directories in a fresh directory of its own under the temporary directory (short
//! paths: the pipes are Unix sockets), so it neither needs nor touches a system-wide MPS;
//! the workers are handed those directories, and the daemon is asked to quit when the run
//! ends (it lets its clients finish). The daemon sees every GPU (its environment has no
//! `CUDA_VISIBLE_DEVICES`), so that a worker's `CUDA_VISIBLE_DEVICES`, which names GPUs as
//! the scheduler sees them, means the same GPU to the MPS server.

use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};

use super::slots::{Slot, SlotDevice};
use crate::spec::MpsMode;

/// NVIDIA's MPS control program (on `PATH` where the CUDA toolkit or driver tools are).
pub const CONTROL_PROGRAM: &str = "nvidia-cuda-mps-control";

/// Whether `slots` put two or more workers on one GPU.
pub fn shares_a_gpu(slots: &[Slot]) -> bool {
    let mut gpus: Vec<&str> = slots
        .iter()
        .filter_map(|slot| match &slot.device {
            SlotDevice::Cuda { visible } => Some(visible.as_str()),
            SlotDevice::Cpu => None,
        })
        .collect();
    let all = gpus.len();
    gpus.sort_unstable();
    gpus.dedup();
    gpus.len() < all
}

/// A control daemon this run started; asked to quit when dropped.
#[derive(Debug)]
pub struct MpsDaemon {
    program: OsString,
    env: Vec<(String, String)>,
}

impl MpsDaemon {
    /// Starts `program -d` (the control daemon, which forks into the background) with its
    /// pipe and log directories under `dir`.
    pub fn start(program: &OsStr, dir: &Path) -> Result<Self> {
        let (pipe, log) = (dir.join("pipe"), dir.join("log"));
        for d in [&pipe, &log] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let env = vec![
            (
                "CUDA_MPS_PIPE_DIRECTORY".to_owned(),
                pipe.display().to_string(),
            ),
            (
                "CUDA_MPS_LOG_DIRECTORY".to_owned(),
                log.display().to_string(),
            ),
        ];
        let status = Command::new(program)
            .arg("-d")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("CUDA_VISIBLE_DEVICES")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("starting {}", program.to_string_lossy()))?;
        ensure!(
            status.success(),
            "{} -d exited with {status} (its log: {})",
            program.to_string_lossy(),
            log.display()
        );
        Ok(Self {
            program: program.to_owned(),
            env,
        })
    }

    /// The environment that makes a worker a client of this daemon's server.
    pub fn worker_env(&self) -> &[(String, String)] {
        &self.env
    }
}

impl Drop for MpsDaemon {
    fn drop(&mut self) {
        let quit = || -> Result<()> {
            let mut child = Command::new(&self.program)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            child
                .stdin
                .take()
                .context("piped stdin")?
                .write_all(b"quit\n")?;
            // Not waited for here: the run's end never hangs on the daemon (a thread reaps
            // the command whenever it returns).
            std::thread::spawn(move || child.wait());
            Ok(())
        };
        if let Err(e) = quit() {
            tracing::warn!("asking the MPS control daemon to quit: {e:#}");
        }
    }
}

/// The daemon for a run whose `slots` are as given, as `mode` asks: started where two
/// slots share a GPU (`auto`: if `program` can be started, else without MPS, said in the
/// log; `on`: or an error), never with `off` (the default).
pub fn for_slots(
    mode: MpsMode,
    slots: &[Slot],
    program: &OsStr,
    dir: &Path,
) -> Result<Option<MpsDaemon>> {
    if mode == MpsMode::Off || !shares_a_gpu(slots) {
        return Ok(None);
    }
    match MpsDaemon::start(program, dir) {
        Ok(daemon) => {
            tracing::info!(
                "CUDA MPS: slots that share a GPU run their kernels side by side (daemon's \
                 directories under {})",
                dir.display()
            );
            Ok(Some(daemon))
        }
        Err(e) if mode == MpsMode::Auto => {
            tracing::info!("no CUDA MPS, slots that share a GPU take turns on it: {e:#}");
            Ok(None)
        }
        Err(e) => Err(e.context("resources.mps = \"on\"")),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn slot(index: usize, gpu: Option<&str>) -> Slot {
        Slot {
            index,
            device: match gpu {
                Some(visible) => SlotDevice::Cuda {
                    visible: visible.to_owned(),
                },
                None => SlotDevice::Cpu,
            },
            threads: 1,
        }
    }

    #[test]
    fn only_two_slots_on_one_gpu_share_it() {
        assert!(!shares_a_gpu(&[slot(0, None), slot(1, None)]));
        assert!(!shares_a_gpu(&[slot(0, Some("0")), slot(0, Some("1"))]));
        assert!(shares_a_gpu(&[
            slot(0, Some("0")),
            slot(1, Some("1")),
            slot(2, Some("0"))
        ]));
    }

    /// A stand-in for the control program: records its arguments, its MPS environment and
    /// what it reads, and fails when `fail` exists beside it.
    fn fake_control(dir: &Path) -> std::path::PathBuf {
        let program = dir.join("mps-control");
        let script = format!(
            "#!/bin/sh\n[ -e {dir}/fail ] && exit 3\n\
             echo \"args=$* pipe=$CUDA_MPS_PIPE_DIRECTORY log=$CUDA_MPS_LOG_DIRECTORY\" >> {dir}/calls\n\
             [ \"$1\" = -d ] || cat >> {dir}/calls\n",
            dir = dir.display()
        );
        std::fs::write(&program, script).unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        program
    }

    #[test]
    fn a_daemon_is_started_for_shared_gpus_and_asked_to_quit_at_the_end() {
        let tmp = tempfile::tempdir().unwrap();
        let program = fake_control(tmp.path());
        let dir = tmp.path().join("mps");
        let shared = [slot(0, Some("0")), slot(1, Some("0"))];
        let daemon = for_slots(MpsMode::Auto, &shared, program.as_os_str(), &dir)
            .unwrap()
            .expect("started");
        let pipe = dir.join("pipe").display().to_string();
        assert!(daemon
            .worker_env()
            .contains(&("CUDA_MPS_PIPE_DIRECTORY".to_owned(), pipe.clone())));
        let calls = || std::fs::read_to_string(tmp.path().join("calls")).unwrap();
        assert_eq!(
            calls(),
            format!("args=-d pipe={pipe} log={}\n", dir.join("log").display())
        );
        drop(daemon);
        let quit = format!(
            "args= pipe={pipe} log={}\nquit\n",
            dir.join("log").display()
        );
        let asked = (0..250).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            calls().ends_with(&quit)
        });
        assert!(asked, "{}", calls());
        // Not for slots on separate GPUs, nor when switched off.
        let separate = [slot(0, Some("0")), slot(0, Some("1"))];
        for (mode, slots) in [(MpsMode::On, &separate[..]), (MpsMode::Off, &shared[..])] {
            assert!(for_slots(mode, slots, program.as_os_str(), &dir)
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn without_a_working_control_program_auto_goes_on_and_on_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let program = fake_control(tmp.path());
        std::fs::write(tmp.path().join("fail"), "").unwrap();
        let shared = [slot(0, Some("0")), slot(1, Some("0"))];
        let dir = tmp.path().join("mps");
        assert!(for_slots(MpsMode::Auto, &shared, program.as_os_str(), &dir)
            .unwrap()
            .is_none());
        let e = for_slots(MpsMode::On, &shared, program.as_os_str(), &dir).unwrap_err();
        assert!(format!("{e:#}").contains("resources.mps"), "{e:#}");
        let missing = tmp.path().join("no-such-program");
        let e = for_slots(MpsMode::On, &shared, missing.as_os_str(), &dir).unwrap_err();
        assert!(format!("{e:#}").contains("starting"), "{e:#}");
    }
}
