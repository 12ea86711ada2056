//! The steps operations are made of, shared with crash recovery: how a replicaSet moves to a
//! new version ([`transition`]), and how each other operation is finished or undone
//! ([`finish`]). Every step is idempotent.

pub(crate) mod finish;
pub(crate) mod transition;

pub(crate) use self::transition::{Filesystem, Prepared};
