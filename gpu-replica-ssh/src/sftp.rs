//! The `sftp` subsystem (what `scp` and `sftp` speak) served by the gateway over a set's
//! [`Files`]: the image needs no SFTP server.
//!
//! A file opened for reading is fetched from the container whole into a spool file on the
//! host (deleted as soon as it is open), and reads are served from there at any offset; a
//! file opened for writing is spooled the same way and stored into the container when it is
//! closed. Spools live in the system's temporary directory.

use std::collections::HashMap;
use std::io::SeekFrom;

use gpu_replica_core::{FileStat, Files};
use russh::server::Msg;
use russh::{Channel, ChannelMsg};
use russh_sftp::protocol::{
    Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode, Version,
};
use russh_sftp::server::StatusReply;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Entries sent per `readdir` answer.
const DIR_BATCH: usize = 100;
/// The most one `read` answers with.
const MAX_READ: u32 = 256 * 1024;
/// Handles one SFTP session may hold open (each may hold a spool).
const MAX_HANDLES: usize = 32;
/// How far past a file's end a write (or a size set) may reach: clients write a window of
/// requests ahead, never holes of gigabytes (which would make a sparse spool, then that many
/// zero bytes in the container).
const MAX_GAP: u64 = 64 << 20;

/// Serves SFTP on `channel` until the client ends it, then ends the channel with status 0
/// (`scp` exits 1 without it, even with every byte delivered).
pub(crate) async fn serve(channel: Channel<Msg>, files: Files) {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    russh_sftp::server::run(theirs, Sftp::new(files)).await;
    let (mut from_sftp, mut to_sftp) = tokio::io::split(ours);
    let (mut reader, writer) = channel.split();
    let from_client = async {
        loop {
            match reader.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    if to_sftp.write_all(&data).await.is_err() {
                        return;
                    }
                }
                Some(ChannelMsg::Eof) => {
                    let _ = to_sftp.shutdown().await;
                }
                Some(ChannelMsg::Close) | None => return,
                Some(_) => {}
            }
        }
    };
    let to_client = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match from_sftp.read(&mut buffer).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => {
                    if writer.data(&buffer[..n]).await.is_err() {
                        return false;
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = from_client => return,
        finished = to_client => if !finished { return },
    }
    let _ = writer.exit_status(0).await;
    let _ = writer.eof().await;
    let _ = writer.close().await;
}

/// An open handle.
enum Open {
    /// A file read from its spool.
    Reading(tokio::fs::File, FileStat),
    /// A file being written to its spool; stored on close.
    Writing {
        path: String,
        spool: tokio::fs::File,
        mode: u32,
    },
    /// A directory's entries still to send.
    Listing(Vec<FileStat>),
}

struct Sftp {
    files: Files,
    open: HashMap<String, Open>,
    next: u64,
}

/// An error with its message, as the client shows it.
fn failure(status_code: StatusCode, message: impl Into<String>) -> StatusReply {
    StatusReply {
        status_code,
        error_message: Some(message.into()),
        language_tag: None,
    }
}

fn failed(e: impl std::fmt::Display) -> StatusReply {
    failure(StatusCode::Failure, e.to_string())
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

fn attributes(stat: &FileStat) -> FileAttributes {
    FileAttributes {
        size: Some(stat.size),
        uid: Some(stat.uid),
        gid: Some(stat.gid),
        permissions: Some(stat.mode),
        atime: Some(stat.mtime.max(0) as u32),
        mtime: Some(stat.mtime.max(0) as u32),
        ..Default::default()
    }
}

/// An unlinked temporary file: gone from the directory as soon as it is open.
async fn spool() -> std::io::Result<tokio::fs::File> {
    let mut name = [0u8; 12];
    getrandom::fill(&mut name).map_err(std::io::Error::other)?;
    let hex: String = name.iter().map(|b| format!("{b:02x}")).collect();
    let path = std::env::temp_dir().join(format!("gpu-replica-sftp-{hex}"));
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .await?;
    tokio::fs::remove_file(&path).await?;
    Ok(file)
}

impl Sftp {
    fn new(files: Files) -> Sftp {
        Sftp {
            files,
            open: HashMap::new(),
            next: 0,
        }
    }

    fn room(&self) -> Result<(), StatusReply> {
        if self.open.len() >= MAX_HANDLES {
            return Err(failure(
                StatusCode::Failure,
                format!("{MAX_HANDLES} handles are open in this session; close one first"),
            ));
        }
        Ok(())
    }

    fn keep(&mut self, open: Open) -> String {
        self.next += 1;
        let handle = self.next.to_string();
        self.open.insert(handle.clone(), open);
        handle
    }

    async fn stat_of(&self, path: &str) -> Result<FileStat, StatusReply> {
        match self.files.stat(path).await {
            Ok(Some(stat)) => Ok(stat),
            Ok(None) => Err(failure(
                StatusCode::NoSuchFile,
                format!("{path}: no such file"),
            )),
            Err(e) => Err(failed(e)),
        }
    }

    /// Fetches `path` whole into a spool for reading.
    async fn fetch(&self, path: &str) -> Result<(tokio::fs::File, u64), StatusReply> {
        let mut file = spool().await.map_err(failed)?;
        let size = self.files.read_to(path, &mut file).await.map_err(failed)?;
        Ok((file, size))
    }
}

impl russh_sftp::server::Handler for Sftp {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        failure(StatusCode::OpUnsupported, "not supported by the gateway")
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        Ok(Version::new())
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let path = if path.is_empty() { ".".into() } else { path };
        Ok(Name {
            id,
            files: vec![File::dummy(self.files.absolute(&path))],
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let mut stat = self.stat_of(&path).await?;
        // stat follows a link: the archive API tells what it points at.
        if stat.mode & 0o170000 == 0o120000 {
            if let Ok(Some(target)) = self.files.read_link(&path).await {
                let base = self.files.absolute(&path);
                let dir = base.rsplit_once('/').map(|(d, _)| d).unwrap_or("/");
                let target = if target.starts_with('/') {
                    target
                } else {
                    format!("{dir}/{target}")
                };
                if let Ok(Some(followed)) = self.files.stat(&target).await {
                    stat = followed;
                }
            }
        }
        Ok(Attrs {
            id,
            attrs: attributes(&stat),
        })
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let stat = self.stat_of(&path).await?;
        Ok(Attrs {
            id,
            attrs: attributes(&stat),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let attrs = match self.open.get_mut(&handle) {
            Some(Open::Reading(_, stat)) => attributes(stat),
            Some(Open::Writing { spool, mode, .. }) => {
                let size = spool.metadata().await.map_err(failed)?.len();
                FileAttributes {
                    size: Some(size),
                    permissions: Some(0o100000 | *mode),
                    ..Default::default()
                }
            }
            Some(Open::Listing(_)) => FileAttributes {
                permissions: Some(0o040755),
                ..Default::default()
            },
            None => return Err(failure(StatusCode::Failure, "no such handle")),
        };
        Ok(Attrs { id, attrs })
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        self.room()?;
        let writing = pflags.intersects(
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::APPEND,
        );
        if !writing {
            let stat = self.stat_of(&filename).await?;
            if stat.is_dir() {
                return Err(failure(
                    StatusCode::Failure,
                    format!("{filename} is a directory"),
                ));
            }
            let (file, size) = self.fetch(&filename).await?;
            let stat = FileStat { size, ..stat };
            let handle = self.keep(Open::Reading(file, stat));
            return Ok(Handle { id, handle });
        }
        let existing = self.files.stat(&filename).await.map_err(failed)?;
        if existing.is_some() && pflags.contains(OpenFlags::EXCLUDE) {
            return Err(failure(StatusCode::Failure, format!("{filename} exists")));
        }
        if existing.is_none() && !pflags.contains(OpenFlags::CREATE) {
            return Err(failure(
                StatusCode::NoSuchFile,
                format!("{filename}: no such file"),
            ));
        }
        if existing.as_ref().is_some_and(|s| s.is_dir()) {
            return Err(failure(
                StatusCode::Failure,
                format!("{filename} is a directory"),
            ));
        }
        let keep_old = existing.is_some() && !pflags.contains(OpenFlags::TRUNCATE);
        let spool = if keep_old {
            self.fetch(&filename).await?.0
        } else {
            spool().await.map_err(failed)?
        };
        let mode = attrs
            .permissions
            .or(existing.as_ref().map(|s| s.mode))
            .unwrap_or(0o644)
            & 0o7777;
        let handle = self.keep(Open::Writing {
            path: filename,
            spool,
            mode,
        });
        Ok(Handle { id, handle })
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let file = match self.open.get_mut(&handle) {
            Some(Open::Reading(file, _)) | Some(Open::Writing { spool: file, .. }) => file,
            _ => return Err(failure(StatusCode::Failure, "not a file handle")),
        };
        file.seek(SeekFrom::Start(offset)).await.map_err(failed)?;
        let mut data = vec![0u8; len.min(MAX_READ) as usize];
        let mut filled = 0;
        while filled < data.len() {
            let n = file.read(&mut data[filled..]).await.map_err(failed)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 && len > 0 {
            return Err(failure(StatusCode::Eof, "end of file"));
        }
        data.truncate(filled);
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        let Some(Open::Writing { spool, .. }) = self.open.get_mut(&handle) else {
            return Err(failure(StatusCode::Failure, "not opened for writing"));
        };
        let end = spool.metadata().await.map_err(failed)?.len();
        if offset > end.saturating_add(MAX_GAP) {
            return Err(failure(
                StatusCode::Failure,
                "a write far past the end of the file (holes are not kept)",
            ));
        }
        spool.seek(SeekFrom::Start(offset)).await.map_err(failed)?;
        spool.write_all(&data).await.map_err(failed)?;
        Ok(ok(id))
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.open.remove(&handle) {
            Some(Open::Writing {
                path,
                mut spool,
                mode,
            }) => {
                spool.flush().await.map_err(failed)?;
                let size = spool.metadata().await.map_err(failed)?.len();
                spool.seek(SeekFrom::Start(0)).await.map_err(failed)?;
                self.files
                    .write_from(&path, mode, size, Box::pin(spool))
                    .await
                    .map_err(failed)?;
                Ok(ok(id))
            }
            Some(_) => Ok(ok(id)),
            None => Err(failure(StatusCode::Failure, "no such handle")),
        }
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        if let Some(mode) = attrs.permissions {
            self.files.set_mode(&path, mode).await.map_err(failed)?;
        }
        // Sizes, owners and times are left as they are.
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        match self.open.get_mut(&handle) {
            Some(Open::Writing { mode, spool, .. }) => {
                if let Some(new) = attrs.permissions {
                    *mode = new & 0o7777;
                }
                if let Some(size) = attrs.size {
                    let end = spool.metadata().await.map_err(failed)?.len();
                    if size > end.saturating_add(MAX_GAP) {
                        return Err(failure(
                            StatusCode::Failure,
                            "a size far past the file's end",
                        ));
                    }
                    spool.set_len(size).await.map_err(failed)?;
                }
                Ok(ok(id))
            }
            Some(_) => Ok(ok(id)),
            None => Err(failure(StatusCode::Failure, "no such handle")),
        }
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        self.room()?;
        let entries = match self.files.list(&path).await.map_err(failed)? {
            Some(entries) => entries,
            None => {
                return Err(failure(
                    StatusCode::NoSuchFile,
                    format!("{path}: no such directory"),
                ))
            }
        };
        let handle = self.keep(Open::Listing(entries));
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(Open::Listing(entries)) = self.open.get_mut(&handle) else {
            return Err(failure(StatusCode::Failure, "not a directory handle"));
        };
        if entries.is_empty() {
            return Err(failure(StatusCode::Eof, "end of directory"));
        }
        let batch: Vec<FileStat> = entries.drain(..entries.len().min(DIR_BATCH)).collect();
        Ok(Name {
            id,
            files: batch
                .iter()
                .map(|stat| File::new(stat.name.clone(), attributes(stat)))
                .collect(),
        })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        self.stat_of(&filename).await?;
        self.files.remove(&filename).await.map_err(failed)?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let mode = attrs.permissions.unwrap_or(0o755);
        self.files.make_dir(&path, mode).await.map_err(failed)?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        self.stat_of(&path).await?;
        self.files.remove_dir(&path).await.map_err(failed)?;
        Ok(ok(id))
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        self.stat_of(&oldpath).await?;
        self.files
            .rename(&oldpath, &newpath)
            .await
            .map_err(failed)?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        match self.files.read_link(&path).await.map_err(failed)? {
            Some(target) => Ok(Name {
                id,
                files: vec![File::dummy(target)],
            }),
            None => Err(failure(
                StatusCode::NoSuchFile,
                format!("{path} is no link"),
            )),
        }
    }
}
