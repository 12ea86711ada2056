//! Keeping the records and Docker in agreement: crash recovery at start and before each
//! operation ([`recovery`]), and the reconciler that follows Docker afterwards ([`reconcile`]).
//! Both use only the steps of [`crate::steps`], never the operations.

pub(crate) mod meter;
pub(crate) mod reconcile;
pub(crate) mod recovery;
