//! The operations, one file per family, each a method of [`crate::Engine`]: they validate,
//! take the set's lock, settle what an interrupted operation left ([`crate::supervise`]), then
//! run the steps of [`crate::steps`] over the records and claims of [`crate::engine`].

pub(crate) mod clone;
pub(crate) mod metrics;
pub(crate) mod migrate;
pub(crate) mod nodes;
pub(crate) mod observe;
pub(crate) mod read;
pub(crate) mod resources;
pub(crate) mod run;
pub(crate) mod state;
pub(crate) mod timers;
pub(crate) mod usage;
pub(crate) mod users;
pub(crate) mod version;
pub(crate) mod volume;
