//! `--manifest FILE`: the record of what is done, one JSON line per image, appended as soon as
//! the image's files are in place. `--resume` reads it back.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::CliError;
use crate::staged::Staged;

/// How the run treats an existing manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The file must not exist; it is created with the first image done.
    Fresh,
    /// Append to it (`--resume`).
    Append,
    /// Replace it (`--overwrite`) when the first image is done.
    Replace,
}

/// The manifest being written.
pub struct Manifest {
    path: PathBuf,
    mode: Mode,
    file: Option<File>,
}

impl Manifest {
    /// Checks that the manifest can be used as `mode` says; nothing is written yet.
    pub fn prepare(path: &Path, mode: Mode) -> Result<Manifest, CliError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => {
                return Err(CliError::Usage(format!(
                    "--manifest {} is a folder; give a file name (JSON lines)",
                    path.display()
                )))
            }
            Ok(_) if mode == Mode::Fresh => {
                return Err(CliError::Exists {
                    path: path.to_path_buf(),
                    hint: "add --resume to continue the run it records, or --overwrite to start a new one"
                        .into(),
                })
            }
            _ => {}
        }
        if let Some(dir) = parent(path) {
            if !dir.is_dir() {
                return Err(CliError::Usage(format!(
                    "--manifest {}: folder {} does not exist",
                    path.display(),
                    dir.display()
                )));
            }
        }
        Ok(Manifest { path: path.to_path_buf(), mode, file: None })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record (a JSON document without newlines) and flushes it to disk.
    pub fn append(&mut self, record: &str) -> Result<(), CliError> {
        let err = CliError::write(&self.path);
        let line = format!("{record}\n");
        match &mut self.file {
            Some(file) => {
                // One write call per line: a reader (or a kill) never sees half a line.
                file.write_all(line.as_bytes()).map_err(err)?;
                file.sync_data().map_err(CliError::write(&self.path))?;
            }
            None => self.file = Some(self.start(&line).map_err(err)?),
        }
        Ok(())
    }

    /// Creates (or continues, or replaces) the file with its first line, returning it open for
    /// appending.
    fn start(&self, first: &str) -> std::io::Result<File> {
        match self.mode {
            Mode::Append if self.path.exists() => {
                let mut file = OpenOptions::new().read(true).append(true).open(&self.path)?;
                // A line cut short by a kill gets its own line; ours starts on a fresh one.
                let len = file.metadata()?.len();
                let mut last = [0u8; 1];
                let mut prefix = "";
                if len > 0 {
                    file.seek(SeekFrom::Start(len - 1))?;
                    file.read_exact(&mut last)?;
                    if last[0] != b'\n' {
                        prefix = "\n";
                    }
                }
                file.write_all(format!("{prefix}{first}").as_bytes())?;
                file.sync_data()?;
                Ok(file)
            }
            _ => {
                let dir = parent(&self.path).unwrap_or(Path::new("."));
                let mut staged = Staged::new_in(dir)?;
                staged.file().write_all(first.as_bytes())?;
                staged.file().sync_data()?;
                if self.mode == Mode::Replace {
                    staged.place_replacing(&self.path)?;
                } else {
                    staged.place_new(&self.path)?;
                }
                OpenOptions::new().append(true).open(&self.path)
            }
        }
    }
}

fn parent(path: &Path) -> Option<&Path> {
    path.parent().filter(|p| !p.as_os_str().is_empty())
}

/// The inputs a manifest lists as done (keys as [`crate::plan::Item::key`]), checking that their
/// files are all still there: an image with a file missing is done again. A line cut short at
/// the end (a killed run) is ignored.
pub fn done(path: &Path) -> Result<HashSet<String>, CliError> {
    let mut done = HashSet::new();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(source) => return Err(CliError::Read { path: path.to_path_buf(), source }),
    };
    let lines: Vec<std::io::Result<String>> = BufReader::new(file).lines().collect();
    let count = lines.len();
    for (n, line) in lines.into_iter().enumerate() {
        let line = line.map_err(|source| CliError::Read { path: path.to_path_buf(), source })?;
        if line.trim().is_empty() {
            continue;
        }
        let record: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) if n + 1 == count => continue,
            Err(e) => {
                return Err(CliError::Manifest {
                    path: path.to_path_buf(),
                    line: n + 1,
                    message: e.to_string(),
                })
            }
        };
        let Some(input) = record["input"].as_str() else {
            return Err(CliError::Manifest {
                path: path.to_path_buf(),
                line: n + 1,
                message: "no \"input\" field: not a gradcam manifest".into(),
            });
        };
        let npy_index = record["npy_index"].as_u64().map(|i| i as usize);
        let files = record["files"].as_array().map(Vec::as_slice).unwrap_or_default();
        if files.iter().all(|f| f.as_str().is_some_and(|f| Path::new(f).is_file())) {
            done.insert(crate::plan::key(input, npy_index));
        }
    }
    Ok(done)
}
