//! A set's files, reached through Docker: what the SSH gateway's SFTP (and so `scp` and
//! `sftp`) is built on, and its port forwarding. Nothing runs in the image for a file's bytes
//! or a path's attributes (Docker's archive API carries them); listing a directory and
//! renaming, removing or making paths run one short `sh` command in the container (busybox or
//! coreutils alike), as the container's own user.

use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Operation, Result};
use crate::ops::Engine;
use crate::runtime::{ContainerRuntime, ImageStream, PathStat};

/// One entry of a directory, or what a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStat {
    /// Its name (the last component).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Unix `st_mode` (type and permission bits).
    pub mode: u32,
    /// Last modification, seconds since the epoch.
    pub mtime: i64,
    /// Owner's uid (0 where the archive API does not say).
    pub uid: u32,
    /// Group's gid (0 where the archive API does not say).
    pub gid: u32,
}

impl FileStat {
    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & 0o170000 == 0o040000
    }
}

impl From<PathStat> for FileStat {
    fn from(stat: PathStat) -> FileStat {
        FileStat {
            name: stat.name,
            size: stat.size,
            mode: stat.mode,
            mtime: stat.mtime,
            uid: 0,
            gid: 0,
        }
    }
}

/// The files of one running set, opened by [`Engine::open_files`].
#[derive(Clone)]
pub struct Files {
    runtime: Arc<dyn ContainerRuntime>,
    container: String,
    home: String,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("container", &self.container)
            .finish()
    }
}

/// Runs a tool the image has, else busybox's (minimal images carry busybox and no coreutils).
const TOOL: &str = r#"t() { if command -v "$1" >/dev/null 2>&1; then "$@"; else busybox "$@"; fi; }
"#;

/// Lists a directory: a `size mode(hex) mtime uid gid name` line per entry where `stat` is
/// there, else `? name` (the archive API then tells the rest). Globbing and `printf` are the
/// shell's own.
const LIST: &str = r#"cd -- "$1" 2>/dev/null || exit 3
if command -v stat >/dev/null 2>&1 || busybox stat -c %s / >/dev/null 2>&1; then full=1; else full=; fi
for f in * .[!.]* ..?*; do
  if [ -e "$f" ] || [ -L "$f" ]; then
    if [ -n "$full" ]; then t stat -c '%s %f %Y %u %g %n' -- "$f" 2>/dev/null; else printf '? %s\n' "$f"; fi
  fi
done
exit 0"#;

impl Engine {
    /// The files of running set `name` (the caller's, or any for an admin; another user's
    /// answers as a missing one), as its container's own user sees them.
    pub async fn open_files(&self, name: &str) -> Result<Files> {
        let container = self.running_here(name, "its files").await?;
        let runtime = self.ctx.shared.runtime.clone();
        let probe = ["sh", "-c", "printf %s \"$HOME\""].map(str::to_string);
        let home = match runtime.exec(&container, &probe, None).await {
            Ok(out) if out.exit_code == 0 && out.output.starts_with('/') => {
                out.output.trim_end().to_string()
            }
            _ => "/".to_string(),
        };
        Ok(Files {
            runtime,
            container,
            home,
        })
    }

    /// A TCP connection to `port` of running set `name`, as its own programs reach it (its
    /// loopback included): what SSH's `-L` and `-W` forward to. Another user's set answers as
    /// a missing one.
    pub async fn connect_port(&self, name: &str, port: u16) -> Result<tokio::net::TcpStream> {
        let container = self.running_here(name, "its ports").await?;
        self.ctx.shared.runtime.connect_port(&container, port).await
    }
}

impl Files {
    /// The directory a session starts in: the container user's `$HOME`, else `/`.
    pub fn home(&self) -> &str {
        &self.home
    }

    /// `path` made absolute (relative to [`Files::home`]) with `.` and `..` resolved by name.
    pub fn absolute(&self, path: &str) -> String {
        let joined = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("{}/{path}", self.home)
        };
        let mut parts: Vec<&str> = Vec::new();
        for part in joined.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                other => parts.push(other),
            }
        }
        format!("/{}", parts.join("/"))
    }

    fn checked(&self, path: &str) -> Result<String> {
        crate::input::os_strings("path", &[path.to_string()])?;
        Ok(self.absolute(path))
    }

    /// What is at `path`; `None` when nothing is.
    pub async fn stat(&self, path: &str) -> Result<Option<FileStat>> {
        let path = self.checked(path)?;
        Ok(self
            .runtime
            .path_stat(&self.container, &path)
            .await?
            .map(FileStat::from))
    }

    /// Where symbolic link `path` points.
    pub async fn read_link(&self, path: &str) -> Result<Option<String>> {
        let path = self.checked(path)?;
        Ok(self
            .runtime
            .path_stat(&self.container, &path)
            .await?
            .map(|s| s.link_target)
            .filter(|t| !t.is_empty()))
    }

    async fn sh(&self, script: &str, args: &[&str]) -> Result<(i64, String)> {
        let script = format!("{TOOL}{script}");
        let mut argv = vec!["sh".to_string(), "-c".into(), script, "sh".into()];
        argv.extend(args.iter().map(|a| a.to_string()));
        let out = self
            .runtime
            .exec(&self.container, &argv, None)
            .await
            .map_err(|e| e.during(Operation::Exec))?;
        if out.exit_code == 126 || out.exit_code == 127 {
            return Err(Error::refused(
                Operation::Exec,
                format!("the image of {} has no sh to do this with", self.container),
            ));
        }
        Ok((out.exit_code, out.output))
    }

    /// The entries of directory `dir` (not `.` and `..`); `None` when `dir` is no directory.
    pub async fn list(&self, dir: &str) -> Result<Option<Vec<FileStat>>> {
        let dir = self.checked(dir)?;
        let (code, output) = self.sh(LIST, &[&dir]).await?;
        if code != 0 {
            return Ok(None);
        }
        let mut entries = Vec::new();
        for line in output.lines() {
            if let Some(name) = line.strip_prefix("? ") {
                let path = format!("{}/{name}", dir.trim_end_matches('/'));
                if let Some(stat) = self.runtime.path_stat(&self.container, &path).await? {
                    entries.push(FileStat {
                        name: name.to_string(),
                        ..FileStat::from(stat)
                    });
                }
            } else if let Some(entry) = parse_list_line(line) {
                entries.push(entry);
            }
        }
        Ok(Some(entries))
    }

    /// Writes the bytes of regular file `path` to `out`; its size.
    pub async fn read_to(
        &self,
        path: &str,
        out: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<u64> {
        let path = self.checked(path)?;
        let archive = self.runtime.download_path(&self.container, &path).await?;
        let mut tar = TarReader::new(archive);
        let (size, kind) = tar.next_entry().await?;
        if kind != b'0' && kind != 0 {
            return Err(Error::InvalidParams(format!(
                "{path} is not a regular file"
            )));
        }
        tar.copy(size, out).await?;
        out.flush()
            .await
            .map_err(|e| Error::Docker(format!("writing {path} out: {e}")))?;
        Ok(size)
    }

    /// Makes `path` a regular file of mode `mode` holding the `size` bytes `input` gives,
    /// owned by the container's user (replacing what was there).
    pub async fn write_from(
        &self,
        path: &str,
        mode: u32,
        size: u64,
        input: Pin<Box<dyn AsyncRead + Send>>,
    ) -> Result<()> {
        let path = self.checked(path)?;
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", &path));
        if name.is_empty() {
            return Err(Error::InvalidParams(format!("{path} names no file")));
        }
        let dir = if dir.is_empty() { "/" } else { dir };
        let head = tar_head(name, mode, size)?;
        let archive = tar_stream(head, size, input);
        self.runtime
            .upload_as_user(&self.container, dir, archive)
            .await
    }

    async fn run(&self, what: &str, script: &str, args: &[&str]) -> Result<()> {
        let (code, output) = self.sh(script, args).await?;
        if code == 0 {
            Ok(())
        } else {
            Err(Error::InvalidParams(format!(
                "{what}: {}",
                output.trim().lines().last().unwrap_or("failed")
            )))
        }
    }

    /// Renames `from` to `to`; refused when `to` exists.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (from, to) = (self.checked(from)?, self.checked(to)?);
        self.run(
            "rename",
            r#"if [ -e "$2" ] || [ -L "$2" ]; then echo "$2 exists" >&2; exit 1; fi; t mv -- "$1" "$2""#,
            &[&from, &to],
        )
        .await
    }

    /// Removes file `path` (not a directory).
    pub async fn remove(&self, path: &str) -> Result<()> {
        let path = self.checked(path)?;
        self.run("remove", r#"t rm -- "$1""#, &[&path]).await
    }

    /// Makes directory `path` with mode `mode`.
    pub async fn make_dir(&self, path: &str, mode: u32) -> Result<()> {
        let path = self.checked(path)?;
        let mode = format!("{:o}", mode & 0o7777);
        self.run("mkdir", r#"t mkdir -m "$2" -- "$1""#, &[&path, &mode])
            .await
    }

    /// Removes empty directory `path`.
    pub async fn remove_dir(&self, path: &str) -> Result<()> {
        let path = self.checked(path)?;
        self.run("rmdir", r#"t rmdir -- "$1""#, &[&path]).await
    }

    /// Gives `path` permission bits `mode`.
    pub async fn set_mode(&self, path: &str, mode: u32) -> Result<()> {
        let path = self.checked(path)?;
        let mode = format!("{:o}", mode & 0o7777);
        self.run("chmod", r#"t chmod "$2" -- "$1""#, &[&path, &mode])
            .await
    }
}

/// `size mode(hex) mtime uid gid name` → an entry.
fn parse_list_line(line: &str) -> Option<FileStat> {
    let mut fields = line.splitn(6, ' ');
    let size = fields.next()?.parse().ok()?;
    let mode = u32::from_str_radix(fields.next()?, 16).ok()?;
    let mtime = fields.next()?.parse().ok()?;
    let uid = fields.next()?.parse().ok()?;
    let gid = fields.next()?.parse().ok()?;
    let name = fields.next()?.to_string();
    (!name.is_empty()).then_some(FileStat {
        name,
        size,
        mode,
        mtime,
        uid,
        gid,
    })
}

/// The tar header block(s) of one regular file `name` (a long name gets GNU's long-name
/// entry first).
fn tar_head(name: &str, mode: u32, size: u64) -> Result<Vec<u8>> {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(mode & 0o7777);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    // The builder writes the header(s) and copies no data from an empty reader; its end
    // (two zero blocks) is cut off, the data and padding go after it.
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_data(&mut header, name, std::io::empty())
        .map_err(|e| Error::InvalidParams(format!("file name '{name}': {e}")))?;
    let mut blocks = builder
        .into_inner()
        .map_err(|e| Error::InvalidParams(format!("file name '{name}': {e}")))?;
    blocks.truncate(blocks.len().saturating_sub(1024));
    Ok(blocks)
}

/// An archive of `head`, then `size` bytes of `input` (short input is an error), padding
/// and the archive's end.
fn tar_stream(head: Vec<u8>, size: u64, input: Pin<Box<dyn AsyncRead + Send>>) -> ImageStream {
    let pad = (512 - (size % 512) as usize) % 512;
    let tail = Bytes::from(vec![0u8; pad + 1024]);
    let body = futures_util::stream::unfold((input, size), |(mut input, left)| async move {
        if left == 0 {
            return None;
        }
        let mut chunk = vec![0u8; left.min(256 * 1024) as usize];
        match input.read(&mut chunk).await {
            Ok(0) => Some((
                Err(Error::InvalidParams(format!(
                    "the file ended {left} bytes short"
                ))),
                (input, 0),
            )),
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok(Bytes::from(chunk)), (input, left - n as u64)))
            }
            Err(e) => Some((
                Err(Error::Docker(format!("reading the file: {e}"))),
                (input, 0),
            )),
        }
    });
    Box::pin(
        futures_util::stream::once(async move { Ok(Bytes::from(head)) })
            .chain(body)
            .chain(futures_util::stream::once(async move { Ok(tail) })),
    )
}

/// Reads the first file of a tar archive as it streams from Docker.
struct TarReader {
    archive: ImageStream,
    buffer: BytesMut,
}

impl TarReader {
    fn new(archive: ImageStream) -> TarReader {
        TarReader {
            archive,
            buffer: BytesMut::new(),
        }
    }

    async fn fill(&mut self, at_least: usize) -> Result<()> {
        while self.buffer.len() < at_least {
            match self.archive.next().await {
                Some(chunk) => self.buffer.extend_from_slice(&chunk?),
                None => return Err(Error::Docker("the archive ended early".into())),
            }
        }
        Ok(())
    }

    async fn block(&mut self, len: usize) -> Result<Bytes> {
        self.fill(len).await?;
        Ok(self.buffer.split_to(len).freeze())
    }

    /// The next file entry's size and type, past PAX and GNU long-name entries.
    async fn next_entry(&mut self) -> Result<(u64, u8)> {
        let mut size_override = None;
        loop {
            let header = self.block(512).await?;
            if header.iter().all(|b| *b == 0) {
                return Err(Error::InvalidParams("nothing there to read".into()));
            }
            let kind = header[156];
            let size = tar_number(&header[124..136]);
            let padded = size.div_ceil(512) * 512;
            match kind {
                b'x' => {
                    let body = self.block(padded as usize).await?;
                    size_override = pax_size(&body[..size as usize]);
                }
                b'g' | b'L' | b'K' => {
                    self.block(padded as usize).await?;
                }
                _ => return Ok((size_override.unwrap_or(size), kind)),
            }
        }
    }

    async fn copy(
        &mut self,
        mut left: u64,
        out: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<()> {
        let failed = |e: std::io::Error| Error::Docker(format!("writing the file out: {e}"));
        while left > 0 {
            if self.buffer.is_empty() {
                self.fill(1).await?;
            }
            let n = (self.buffer.len() as u64).min(left) as usize;
            let chunk = self.buffer.split_to(n);
            out.write_all(&chunk).await.map_err(failed)?;
            left -= n as u64;
        }
        Ok(())
    }
}

/// A tar header's number: octal text, or base-256 when the high bit is set.
fn tar_number(field: &[u8]) -> u64 {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        return field[1..]
            .iter()
            .fold(u64::from(field[0] & 0x7f), |n, b| (n << 8) | u64::from(*b));
    }
    let text = String::from_utf8_lossy(field);
    u64::from_str_radix(text.trim_matches(|c: char| c == '\0' || c == ' '), 8).unwrap_or(0)
}

/// The `size` record of a PAX extended header.
fn pax_size(body: &[u8]) -> Option<u64> {
    String::from_utf8_lossy(body).lines().find_map(|record| {
        let (_, kv) = record.split_once(' ')?;
        kv.strip_prefix("size=")?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_line_parses_names_with_spaces_and_skips_noise() {
        let stat = parse_list_line("12 81a4 1700000000 1000 100 my file.txt").unwrap();
        assert_eq!(stat.name, "my file.txt");
        assert_eq!(
            (stat.size, stat.mode, stat.uid, stat.gid),
            (12, 0o100644, 1000, 100)
        );
        assert!(parse_list_line("stat: can't stat 'x'").is_none());
        assert!(parse_list_line("4096 41ed 1 0 0 dir").unwrap().is_dir());
    }

    #[tokio::test]
    async fn an_archive_written_is_read_back_with_its_bytes() {
        for (name, size) in [
            ("a.bin", 0u64),
            ("b.bin", 511),
            ("c.bin", 513),
            (&"n".repeat(150)[..], 70_000),
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let head = tar_head(name, 0o644, size).unwrap();
            let stream = tar_stream(head, size, Box::pin(std::io::Cursor::new(data.clone())));
            let bytes: Vec<u8> = stream
                .map(|c| c.unwrap().to_vec())
                .collect::<Vec<_>>()
                .await
                .concat();
            assert_eq!(bytes.len() % 512, 0);
            // The tar crate reads it as one file of those bytes.
            let mut archive = tar::Archive::new(&bytes[..]);
            let mut entries = archive.entries().unwrap();
            let mut entry = entries.next().unwrap().unwrap();
            assert_eq!(entry.path().unwrap().to_str().unwrap(), name);
            let mut read = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut read).unwrap();
            assert_eq!(read, data);
            // And so does ours.
            let stream: ImageStream = Box::pin(futures_util::stream::iter(
                bytes
                    .chunks(700)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect::<Vec<_>>(),
            ));
            let mut tar = TarReader::new(stream);
            let (got, kind) = tar.next_entry().await.unwrap();
            assert_eq!((got, kind), (size, b'0'));
            let mut out = Vec::new();
            tar.copy(got, &mut out).await.unwrap();
            assert_eq!(out, data);
        }
    }

    #[tokio::test]
    async fn short_input_fails_the_archive() {
        let head = tar_head("x", 0o644, 10).unwrap();
        let stream = tar_stream(head, 10, Box::pin(std::io::Cursor::new(vec![1u8; 4])));
        let results: Vec<Result<Bytes>> = stream.collect().await;
        assert!(results.iter().any(|r| r.is_err()));
    }

    #[test]
    fn paths_resolve_against_home_by_name() {
        let files = Files {
            runtime: Arc::new(crate::runtime::MockContainerRuntime::new()),
            container: "c".into(),
            home: "/root".into(),
        };
        assert_eq!(files.absolute("."), "/root");
        assert_eq!(files.absolute("a/../b"), "/root/b");
        assert_eq!(files.absolute("/../../etc"), "/etc");
        assert_eq!(files.absolute("../.."), "/");
    }
}
