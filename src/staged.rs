//! Files that appear whole or not at all, next to their final place.
//!
//! A [`Staged`] file is written in the target's own folder first, then put in place under its
//! final name in one step. On Linux it has no name at all while it is written (`O_TMPFILE`):
//! a process killed at any point, even by SIGKILL, leaves nothing behind, and no other process
//! can open, replace or plant a link in its place. It is then linked in exclusively (an existing
//! file there is an error, never overwritten) or, when asked, renamed over the old file. Where
//! the file system has no `O_TMPFILE`, a named temporary with an unpredictable name, created
//! exclusively (`tempfile`), stands in; only a SIGKILL can leave one of those behind.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// A file being written next to its target.
pub struct Staged {
    file: File,
    /// The named stand-in, when the file system has no anonymous files.
    named: Option<tempfile::TempPath>,
    dir: PathBuf,
}

/// A staged file put in place: the path, and which file it is (to undo only our own).
pub struct Placed {
    pub path: PathBuf,
    id: Option<(u64, u64)>,
    /// Held open so the file's inode number cannot be reused by another file before `undo`.
    _file: File,
}

impl Staged {
    /// A new, empty file in `dir` (which must exist), readable and writable.
    pub fn new_in(dir: &Path) -> io::Result<Staged> {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        #[cfg(target_os = "linux")]
        if let Some(file) = anonymous(dir)? {
            return Ok(Staged { file, named: None, dir: dir.to_path_buf() });
        }
        let named = tempfile::Builder::new().prefix(".gradcam-").suffix(".tmp").tempfile_in(dir)?;
        let (file, path) = named.into_parts();
        #[cfg(unix)]
        {
            // tempfile creates 0600; a picture gets the usual permissions.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        Ok(Staged { file, named: Some(path), dir: dir.to_path_buf() })
    }

    /// The file, to write (and read back).
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Puts the complete file at `target` (in the folder it was staged in), which must not exist:
    /// an existing file there is left alone and the error is [`io::ErrorKind::AlreadyExists`].
    pub fn place_new(self, target: &Path) -> io::Result<Placed> {
        let id = identity(&self.file);
        match self.named {
            Some(named) => {
                named.persist_noclobber(target).map_err(|e| e.error)?;
            }
            None => link(&self.file, target)?,
        }
        Ok(Placed { path: target.to_path_buf(), id, _file: self.file })
    }

    /// Puts the complete file at `target`, atomically replacing a file already there.
    pub fn place_replacing(self, target: &Path) -> io::Result<Placed> {
        let id = identity(&self.file);
        let named = match self.named {
            Some(named) => named,
            None => {
                // Give it a hidden, unpredictable name first, then rename that over the target.
                let file = &self.file;
                tempfile::Builder::new()
                    .prefix(".gradcam-")
                    .suffix(".tmp")
                    .make_in(&self.dir, |path| link(file, path))?
                    .into_temp_path()
            }
        };
        named.persist(target).map_err(|e| e.error)?;
        Ok(Placed { path: target.to_path_buf(), id, _file: self.file })
    }
}

impl Placed {
    /// Removes the file again, if the path still holds the very file that was placed there
    /// (never a file someone else put there since).
    pub fn undo(self) {
        let still_ours = match (self.id, std::fs::symlink_metadata(&self.path)) {
            (Some(id), Ok(meta)) => meta_identity(&meta) == Some(id),
            _ => false,
        };
        if still_ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn identity(file: &File) -> Option<(u64, u64)> {
    file.metadata().ok().as_ref().and_then(meta_identity)
}

#[cfg(unix)]
fn meta_identity(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn meta_identity(_: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

/// An `O_TMPFILE` file in `dir`, or `None` where the file system does not offer them.
#[cfg(target_os = "linux")]
fn anonymous(dir: &Path) -> io::Result<Option<File>> {
    use rustix::fs::{Mode, OFlags};
    use rustix::io::Errno;
    let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
    match rustix::fs::open(dir, flags, Mode::from_raw_mode(0o644)) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(e) if e == Errno::OPNOTSUPP || e == Errno::ISDIR || e == Errno::INVAL => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Gives an anonymous file a name (`linkat`, which never replaces an existing file), or moves a
/// named one (never reached: named files are placed through `tempfile`).
fn link(file: &File, target: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{AtFlags, CWD};
        use std::os::fd::AsRawFd;
        let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        match rustix::fs::linkat(CWD, proc_path.as_str(), CWD, target, AtFlags::SYMLINK_FOLLOW) {
            Ok(()) => Ok(()),
            // No /proc: linking the descriptor itself needs privileges, but may be allowed.
            Err(rustix::io::Errno::NOENT) if !Path::new("/proc/self/fd").exists() => {
                rustix::fs::linkat(file, "", CWD, target, AtFlags::EMPTY_PATH).map_err(Into::into)
            }
            Err(e) => Err(e.into()),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, target);
        Err(io::Error::new(io::ErrorKind::Unsupported, "anonymous files exist only on Linux"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_staged_file_has_no_name_until_placed_and_never_clobbers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old.png"), b"old").unwrap();
        let mut staged = Staged::new_in(dir.path()).unwrap();
        staged.file().write_all(b"new").unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(names(dir.path()), ["old.png"], "nothing visible while written");
        }
        let err = staged.place_new(&dir.path().join("old.png")).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(dir.path().join("old.png")).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["old.png"], "a failed placement leaves nothing");

        let mut staged = Staged::new_in(dir.path()).unwrap();
        staged.file().write_all(b"new").unwrap();
        let placed = staged.place_new(&dir.path().join("new.png")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("new.png")).unwrap(), b"new");
        placed.undo();
        assert_eq!(names(dir.path()), ["old.png"]);

        let mut staged = Staged::new_in(dir.path()).unwrap();
        staged.file().write_all(b"newer").unwrap();
        staged.place_replacing(&dir.path().join("old.png")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("old.png")).unwrap(), b"newer");
        assert_eq!(names(dir.path()), ["old.png"]);
    }

    #[test]
    fn undo_leaves_a_file_someone_else_put_there() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x.png");
        let placed = Staged::new_in(dir.path()).unwrap().place_new(&target).unwrap();
        std::fs::remove_file(&target).unwrap();
        std::fs::write(&target, b"theirs").unwrap();
        placed.undo();
        assert_eq!(std::fs::read(&target).unwrap(), b"theirs");
    }
}
