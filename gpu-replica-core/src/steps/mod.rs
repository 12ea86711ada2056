//! The steps operations are made of, shared with crash recovery: how a replicaSet moves to a
//! new version ([`transition`]), how each other operation is finished or undone ([`finish`]),
//! and how a migration is undone from its source ([`migration`]). Every step is idempotent.

pub(crate) mod finish;
pub(crate) mod migration;
pub(crate) mod transition;

pub(crate) use self::transition::{Filesystem, Prepared};
