//! GPUs through NVML. `nvml-wrapper` loads `libnvidia-ml` at run time, so a host without the
//! NVIDIA driver simply reports no GPUs (with the reason), never a crash. The probe sits
//! behind [`GpuProbe`] so tests can feed a fake device list.

use cis490_api::Gpu;

/// What a GPU probe found: the devices, driver and CUDA versions, and why none were found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuReport {
    pub gpus: Vec<Gpu>,
    pub driver_version: Option<String>,
    pub cuda_version: Option<String>,
    /// One line saying why there are no GPUs (or why some could not be read).
    pub note: Option<String>,
}

/// A source of GPU facts. The real one is [`NvmlProbe`]; tests use [`StaticGpuProbe`].
pub trait GpuProbe: Send + Sync {
    fn probe(&self) -> GpuReport;
}

/// Asks the NVIDIA driver through NVML.
#[derive(Debug, Default, Clone, Copy)]
pub struct NvmlProbe;

const MIB: u64 = 1024 * 1024;

impl GpuProbe for NvmlProbe {
    fn probe(&self) -> GpuReport {
        let nvml = match nvml_wrapper::Nvml::init() {
            Ok(nvml) => nvml,
            Err(e) => {
                return GpuReport {
                    note: Some(format!(
                        "no NVIDIA GPU: NVML unavailable ({})",
                        one_line(&e)
                    )),
                    ..GpuReport::default()
                }
            }
        };
        let driver_version = nvml.sys_driver_version().ok();
        let cuda_version = nvml.sys_cuda_driver_version().ok().map(|v| {
            format!(
                "{}.{}",
                nvml_wrapper::cuda_driver_version_major(v),
                nvml_wrapper::cuda_driver_version_minor(v)
            )
        });
        let count = match nvml.device_count() {
            Ok(n) => n,
            Err(e) => {
                return GpuReport {
                    driver_version,
                    cuda_version,
                    note: Some(format!("NVML cannot count devices ({})", one_line(&e))),
                    ..GpuReport::default()
                }
            }
        };
        let mut gpus = Vec::new();
        let mut problems = Vec::new();
        for index in 0..count {
            let device = match nvml.device_by_index(index) {
                Ok(d) => d,
                Err(e) => {
                    problems.push(format!("GPU {index}: {}", one_line(&e)));
                    continue;
                }
            };
            let memory = match device.memory_info() {
                Ok(m) => m,
                Err(e) => {
                    problems.push(format!("GPU {index} memory: {}", one_line(&e)));
                    continue;
                }
            };
            gpus.push(Gpu {
                index,
                name: device
                    .name()
                    .unwrap_or_else(|_| "unknown NVIDIA GPU".into()),
                uuid: device.uuid().ok(),
                vram_total_mib: memory.total / MIB,
                vram_free_mib: memory.free / MIB,
                vram_allocatable_mib: memory.total / MIB,
                vram_allocated_mib: 0,
            });
        }
        let note = if !problems.is_empty() {
            Some(problems.join("; "))
        } else if gpus.is_empty() {
            Some("NVML found no NVIDIA GPU".to_string())
        } else {
            None
        };
        GpuReport {
            gpus,
            driver_version,
            cuda_version,
            note,
        }
    }
}

/// A fixed device list: for tests, and for hosts whose GPUs are declared rather than probed.
#[derive(Debug, Clone, Default)]
pub struct StaticGpuProbe(pub GpuReport);

impl GpuProbe for StaticGpuProbe {
    fn probe(&self) -> GpuReport {
        self.0.clone()
    }
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}
