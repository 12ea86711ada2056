//! Scheduling: which GPUs and which host ports a new claim should take.
//!
//! Both schedulers are pure and deterministic: given what exists and what is taken, they always
//! give the same answer. The engine then makes the choice real with a compare-and-swap in the
//! store, and retries with fresh data if another engine was faster.

mod gpu;
mod port;

pub use self::gpu::pick_gpus;
pub use self::port::{host_port_is_free, pick_ports, PortRange};
