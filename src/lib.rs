pub use gpu_replica_core::*;
