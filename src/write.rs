//! Stage 4, write: each image's files put in place together, then its manifest line.
//!
//! An image's files are first written whole to unnamed files in the output folder
//! ([`crate::staged`]), then given their names one after the other, and only then recorded in
//! the manifest. Placing never overwrites an existing file unless `--overwrite` says so; when
//! one of an image's files cannot be placed, those already placed are removed again (only files
//! this run created), so an image's files appear together or not at all. A stop request (signal
//! or failure elsewhere) is honoured between images, never inside one.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::CliError;
use crate::manifest::Manifest;
use crate::npy_out::NpyOut;
use crate::progress::Progress;
use crate::read::Failed;
use crate::render::{Rendered, Renderer};
use crate::report::{image_record, Reporter};
use crate::staged::{Placed, Staged};
use crate::stop::Stop;

/// What the writer did.
#[derive(Default)]
pub struct Written {
    pub images: usize,
    pub failed: usize,
    pub pictures: usize,
    /// The first few files written, for the closing summary.
    pub examples: Vec<PathBuf>,
    /// Whether the run created the output folder.
    pub created_out: bool,
}

pub struct Writer<'r> {
    pub out: PathBuf,
    pub overwrite: bool,
    pub manifest: Option<Manifest>,
    pub npy: Option<NpyOut>,
    /// Identities (device, inode) of the input files, never to be replaced.
    pub inputs: HashSet<(u64, u64)>,
    pub renderer: &'r Renderer,
    pub reporter: Reporter,
    pub progress: Progress,
    pub stop: Stop,
    pub model_size: (usize, usize),
    pub written: Written,
}

impl Writer<'_> {
    /// Writes every rendered image in order until the input ends or a stop is requested.
    pub fn run(&mut self, rendered: impl Iterator<Item = Result<Rendered, Failed>>) -> Result<(), CliError> {
        for next in rendered {
            if self.stop.requested() {
                break;
            }
            match next {
                Ok(r) => self.commit(r)?,
                Err(f) => {
                    self.written.failed += 1;
                    self.reporter.failed(&f);
                }
            }
            self.progress.inc();
        }
        Ok(())
    }

    fn commit(&mut self, r: Rendered) -> Result<(), CliError> {
        self.ensure_out()?;
        // Write everything first, unnamed: a full disk or a kill leaves nothing.
        let mut staged = Vec::with_capacity(r.files.len());
        for (path, bytes) in &r.files {
            let mut file = Staged::new_in(&self.out).map_err(CliError::write(path))?;
            file.file().write_all(bytes).map_err(CliError::write(path))?;
            file.file().sync_data().map_err(CliError::write(path))?;
            staged.push((path.clone(), file));
        }
        let mut placed: Vec<Placed> = Vec::with_capacity(staged.len());
        for (path, file) in staged {
            let result = if self.overwrite {
                if self.is_input(&path) {
                    undo(placed);
                    return self.fail(
                        r,
                        CliError::Usage(format!(
                        "{} is one of the inputs: refusing to overwrite it with an output; use another --out",
                        path.display()
                    )),
                    );
                }
                file.place_replacing(&path)
            } else {
                file.place_new(&path)
            };
            match result {
                Ok(p) => placed.push(p),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    undo(placed);
                    return self.fail(
                        r,
                        CliError::Exists {
                            path,
                            hint: "add --overwrite to replace earlier outputs, or choose another --out"
                                .into(),
                        },
                    );
                }
                Err(e) => {
                    undo(placed);
                    return Err(CliError::Write { path, source: e });
                }
            }
        }
        sync_dir(&self.out);
        let names = self.renderer.class_names(r.num_classes);
        let npy_first = self.npy.as_ref().map(NpyOut::next_index);
        let input_hw = match &r.item.source {
            crate::plan::Source::Npy { batch, .. } => batch.image_hw(),
            crate::plan::Source::Image => self.model_size,
        };
        let record = image_record(&r, names, npy_first, input_hw);
        if let Some(manifest) = &mut self.manifest {
            if let Err(e) = manifest.append(&record.to_string()) {
                undo(placed);
                return Err(e);
            }
        }
        if let Some(npy) = &mut self.npy {
            for map in &r.finals {
                npy.push(map)?;
            }
        }
        self.written.images += 1;
        self.written.pictures += r.files.len();
        for (path, _) in r.files.iter().take(8usize.saturating_sub(self.written.examples.len())) {
            self.written.examples.push(path.clone());
        }
        self.reporter.image(&r, record, names);
        Ok(())
    }

    fn fail(&mut self, r: Rendered, error: CliError) -> Result<(), CliError> {
        self.written.failed += 1;
        self.reporter.failed(&Failed { item: r.item, error });
        Ok(())
    }

    /// Creates the output folder on first use (so a run that writes nothing creates nothing).
    fn ensure_out(&mut self) -> Result<(), CliError> {
        if self.out.is_dir() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.out).map_err(CliError::write(&self.out))?;
        self.written.created_out = true;
        Ok(())
    }

    fn is_input(&self, path: &Path) -> bool {
        identity(path).is_some_and(|id| self.inputs.contains(&id))
    }
}

fn undo(placed: Vec<Placed>) {
    for p in placed {
        p.undo();
    }
}

/// Makes the new names durable before the manifest says they exist (best effort).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// (device, inode) of a file, when it exists.
pub fn identity(path: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}
