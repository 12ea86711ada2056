//! Backups while the server runs (admins only). Restoring is done on a stopped server's store
//! ([`crate::backup::restore`]); the next start settles the difference with Docker.

use crate::error::Result;
use crate::ops::Engine;

impl Engine {
    /// A backup of the whole store at one point in time, as the bytes of a backup file
    /// (admins only; see [`crate::backup`]).
    pub async fn backup(&self) -> Result<Vec<u8>> {
        self.admin_only("taking a backup")?;
        let (header, bytes) = crate::backup::take(self.ctx.store().as_ref()).await?;
        self.ctx
            .emit(
                "backup",
                "",
                true,
                format!(
                    "backup taken: {} records, {} bytes",
                    header.records,
                    bytes.len()
                ),
            )
            .await;
        Ok(bytes)
    }
}
