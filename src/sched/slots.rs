//! Device discovery: the slots trials lease. Each CUDA device offers `slots_per_gpu`
//! slots; without one (or with `device = "cpu"`) the CPU offers slots sized to its cores.

use anyhow::{ensure, Result};

use crate::spec::{parse_device, DeviceChoice, ResourcesSpec};

/// Where a slot's worker computes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SlotDevice {
    Cpu,
    /// A GPU, named as the worker's `CUDA_VISIBLE_DEVICES` will name it (an index or UUID
    /// as this process sees it), so the worker sees exactly that one GPU as `cuda:0`.
    Cuda {
        visible: String,
    },
}

/// One place a worker may run, with the threads its worker uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub index: usize,
    pub device: SlotDevice,
    pub threads: usize,
}

impl Slot {
    /// A short name for logs and status: `cpu/0`, `cuda:1/0`.
    pub fn label(&self) -> String {
        match &self.device {
            SlotDevice::Cpu => format!("cpu/{}", self.index),
            SlotDevice::Cuda { visible } => format!("cuda:{visible}/{}", self.index),
        }
    }
}

/// What the machine offers, as discovered (kept apart from the planning so the plan can
/// be tested for any machine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub cores: usize,
    /// CUDA devices as this process may use them (their `CUDA_VISIBLE_DEVICES` names).
    pub gpus: Vec<String>,
    /// Memory of the smallest of them, in bytes (`nvidia-smi`), when known.
    pub gpu_memory: Option<u64>,
}

impl Machine {
    pub fn discover() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let count = tch::Cuda::device_count().max(0) as usize;
        // Inside an already narrowed CUDA_VISIBLE_DEVICES, device i is its i-th entry.
        let inherited: Vec<String> = std::env::var("CUDA_VISIBLE_DEVICES")
            .ok()
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let gpus = (0..count)
            .map(|i| inherited.get(i).cloned().unwrap_or_else(|| i.to_string()))
            .collect();
        let gpu_memory = if count > 0 { nvidia_smi_memory() } else { None };
        Self {
            cores,
            gpus,
            gpu_memory,
        }
    }
}

/// The total memory of the smallest GPU `nvidia-smi` lists (it sees what
/// `CUDA_VISIBLE_DEVICES` leaves visible), in bytes.
fn nvidia_smi_memory() -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=memory.total", "--format=csv,noheader,nounits"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .min()
        .map(|mib| mib << 20)
}

/// The slots for `jobs` trials: GPUs when the spec's device allows and there are any,
/// else the CPU. `cpu_slots` (from `--slots`) overrides `resources.cpu_slots`.
pub fn plan_slots(
    machine: &Machine,
    resources: &ResourcesSpec,
    cpu_slots: Option<usize>,
    jobs: usize,
) -> Result<Vec<Slot>> {
    let jobs = jobs.max(1);
    let gpus: Vec<&String> = match parse_device(&resources.device)? {
        DeviceChoice::Cpu => Vec::new(),
        DeviceChoice::Auto => machine.gpus.iter().collect(),
        DeviceChoice::Cuda(n) => {
            ensure!(
                n < machine.gpus.len(),
                "resources.device: cuda:{n} requested, {} CUDA devices present",
                machine.gpus.len()
            );
            vec![&machine.gpus[n]]
        }
    };
    let devices: Vec<SlotDevice> = if gpus.is_empty() {
        let wanted = cpu_slots.unwrap_or(resources.cpu_slots);
        ensure!(
            cpu_slots != Some(0),
            "--slots must be at least 1 (or leave it out for one per core)"
        );
        let count = if wanted == 0 {
            (machine.cores / resources.threads.max(1)).max(1)
        } else {
            wanted
        };
        vec![SlotDevice::Cpu; count.min(jobs)]
    } else {
        gpus.iter()
            .flat_map(|g| {
                std::iter::repeat_n(
                    SlotDevice::Cuda {
                        visible: (*g).clone(),
                    },
                    resources.slots_per_gpu,
                )
            })
            .collect()
    };
    // Threads: as the spec says, else the cores shared among the workers that will run.
    let in_use = devices.len().min(jobs);
    let threads = if resources.threads > 0 {
        resources.threads
    } else {
        (machine.cores / in_use).max(1)
    };
    let mut per_device: std::collections::HashMap<SlotDevice, usize> = Default::default();
    Ok(devices
        .into_iter()
        .map(|device| {
            let index = per_device.entry(device.clone()).or_default();
            let slot = Slot {
                index: *index,
                device,
                threads,
            };
            *index += 1;
            slot
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(cores: usize, gpus: &[&str]) -> Machine {
        Machine {
            cores,
            gpus: gpus.iter().map(|g| g.to_string()).collect(),
            gpu_memory: None,
        }
    }

    fn resources(device: &str) -> ResourcesSpec {
        ResourcesSpec {
            device: device.into(),
            ..Default::default()
        }
    }

    #[test]
    fn cpu_slots_follow_the_cores_and_never_exceed_the_trials() {
        let slots = plan_slots(&machine(8, &[]), &resources("auto"), None, 100).unwrap();
        assert_eq!(slots.len(), 8);
        assert!(slots
            .iter()
            .all(|s| s.device == SlotDevice::Cpu && s.threads == 1));
        let one = plan_slots(&machine(8, &[]), &resources("auto"), None, 1).unwrap();
        assert_eq!((one.len(), one[0].threads), (1, 8));
        let two = plan_slots(&machine(8, &[]), &resources("cpu"), Some(2), 6).unwrap();
        assert_eq!(
            two.iter()
                .map(|s| (s.label(), s.threads))
                .collect::<Vec<_>>(),
            [("cpu/0".to_string(), 4), ("cpu/1".to_string(), 4)]
        );
        assert!(plan_slots(&machine(8, &[]), &resources("cpu"), Some(0), 6).is_err());
    }

    #[test]
    fn each_gpu_offers_its_slots_and_cpu_keeps_the_cpu() {
        let mut r = resources("auto");
        r.slots_per_gpu = 3;
        let slots = plan_slots(&machine(16, &["0", "1"]), &r, None, 4).unwrap();
        let labels: Vec<_> = slots.iter().map(Slot::label).collect();
        assert_eq!(
            labels,
            ["cuda:0/0", "cuda:0/1", "cuda:0/2", "cuda:1/0", "cuda:1/1", "cuda:1/2"]
        );
        assert_eq!(slots[0].threads, 4, "16 cores over the 4 trials that run");
        // Inherited CUDA_VISIBLE_DEVICES names are kept; cuda:N picks one device.
        let one = plan_slots(&machine(4, &["2", "5"]), &resources("cuda:1"), None, 9).unwrap();
        assert!(one.iter().all(|s| s.device
            == SlotDevice::Cuda {
                visible: "5".into()
            }));
        assert!(plan_slots(&machine(4, &["0"]), &resources("cuda:1"), None, 1).is_err());
        let cpu = plan_slots(&machine(4, &["0"]), &resources("cpu"), None, 9).unwrap();
        assert!(cpu.iter().all(|s| s.device == SlotDevice::Cpu));
    }
}
