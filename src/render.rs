//! Stage 3, render: one image's maps into encoded pictures (overlays, heatmaps, the grid), named
//! in the output folder, plus the record of what they are.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gradcam_core::{Layout, Method};
use gradcam_viz::{Colormap, GridOptions, PictureFormat};
use image::RgbImage;
use ndarray::ArrayD;

use crate::assets::ClassNames;
use crate::cli::PictureKind;
use crate::compute::{ImageResult, MapResult, Prediction};
use crate::error::CliError;
use crate::plan::Item;
use crate::read::Failed;

/// Longest side of a grid cell: a grid stays viewable whatever the photos' size.
const GRID_CELL_SIDE: u32 = 512;

/// What one map became.
pub struct MapRecord {
    pub class: usize,
    pub rank: Option<usize>,
    /// The layer and its layout, or `None` for the combination of several layers.
    pub layer: Option<(String, Layout)>,
    pub method: Method,
    pub overlay: Option<PathBuf>,
    pub heatmap: Option<PathBuf>,
    /// A pixel-space method's picture (`deprocess_image`).
    pub pixels: Option<PathBuf>,
    /// Whether `--npy-out` holds this map.
    pub is_final: bool,
}

impl MapRecord {
    /// What `map` is, with no picture yet.
    fn of(map: &MapResult) -> Self {
        MapRecord {
            class: map.class,
            rank: map.rank,
            layer: map.layer.clone(),
            method: map.method,
            overlay: None,
            heatmap: None,
            pixels: None,
            is_final: map.is_final,
        }
    }
}

/// One image, rendered: files to write and what they hold.
pub struct Rendered {
    pub item: Item,
    pub num_classes: usize,
    pub predictions: Vec<Prediction>,
    pub target_score: Option<String>,
    pub layouts: Vec<(String, Layout)>,
    pub maps: Vec<MapRecord>,
    pub grid: Option<PathBuf>,
    /// Every file of the image: path and encoded bytes.
    pub files: Vec<(PathBuf, Vec<u8>)>,
    /// The maps `--npy-out` stacks, in order: class rank, then method (`(H, W)`, or
    /// `(3, H, W)` for a pixel-space method).
    pub finals: Vec<ArrayD<f32>>,
    pub warnings: Vec<String>,
}

/// How pictures are drawn and named.
pub struct Renderer {
    pub out: PathBuf,
    pub colormap: Colormap,
    pub alpha: f64,
    pub pictures: Vec<PictureKind>,
    pub methods: Vec<Method>,
    pub layers: Vec<String>,
    pub keep_finals: bool,
    names: OnceLock<ClassNames>,
}

impl Renderer {
    pub fn new(
        out: PathBuf,
        colormap: Colormap,
        alpha: f64,
        pictures: Vec<PictureKind>,
        methods: Vec<Method>,
        layers: Vec<String>,
        keep_finals: bool,
    ) -> Self {
        Renderer { out, colormap, alpha, pictures, methods, layers, keep_finals, names: OnceLock::new() }
    }

    /// The class names of a model with `num_classes` outputs (read once).
    pub fn class_names(&self, num_classes: usize) -> &ClassNames {
        self.names.get_or_init(|| ClassNames::for_classes(num_classes))
    }

    fn wants(&self, kind: PictureKind) -> bool {
        self.pictures.contains(&kind)
    }

    /// The grid's path for an item named `name`.
    pub fn grid_path(&self, name: &str) -> PathBuf {
        self.out.join(format!("{name}.grid.png"))
    }

    /// The overlay and heatmap paths of a map (see [`map_stem`]).
    pub fn map_paths(
        &self,
        name: &str,
        layer: Option<&str>,
        method: Method,
        class: Option<usize>,
    ) -> [PathBuf; 2] {
        let stem = map_stem(name, layer, method, class);
        [self.out.join(format!("{stem}.overlay.png")), self.out.join(format!("{stem}.heatmap.png"))]
    }

    /// The picture of a pixel-space method's map (see [`map_stem`]).
    pub fn pixels_path(
        &self,
        name: &str,
        layer: Option<&str>,
        method: Method,
        class: Option<usize>,
    ) -> PathBuf {
        self.out.join(format!("{}.pixels.png", map_stem(name, layer, method, class)))
    }

    pub fn render(&self, result: ImageResult) -> Result<Rendered, Failed> {
        let ImageResult { item, picture, num_classes, predictions, target_score, maps, layouts, warnings } =
            result;
        match self.draw(&item, &picture, num_classes, &maps) {
            Ok((records, grid, files)) => Ok(Rendered {
                finals: if self.keep_finals {
                    maps.into_iter()
                        .filter(|m| m.is_final)
                        .map(|m| m.pixels.map_or_else(|| m.map.into_dyn(), |p| p.into_dyn()))
                        .collect()
                } else {
                    Vec::new()
                },
                item,
                num_classes,
                predictions,
                target_score,
                layouts,
                maps: records,
                grid,
                files,
                warnings,
            }),
            Err(error) => Err(Failed { item, error }),
        }
    }

    #[allow(clippy::type_complexity)]
    fn draw(
        &self,
        item: &Item,
        picture: &RgbImage,
        num_classes: usize,
        maps: &[MapResult],
    ) -> Result<(Vec<MapRecord>, Option<PathBuf>, Vec<(PathBuf, Vec<u8>)>), CliError> {
        let mut files = Vec::new();
        let mut records = Vec::with_capacity(maps.len());
        let mut overlays: Vec<Option<RgbImage>> = Vec::with_capacity(maps.len());
        let need_overlay = self.wants(PictureKind::Overlay) || self.wants(PictureKind::Grid);
        for map in maps {
            let layer = map.layer.as_ref().map(|(l, _)| l.as_str());
            if let Some(pixels) = &map.pixels {
                let path = self.pixels_path(&item.name, layer, map.method, map.rank.map(|_| map.class));
                let picture = gradcam_viz::deprocess_image(pixels.view())?;
                files.push((path.clone(), encode(&picture, &path)?));
                records.push(MapRecord { pixels: Some(path), ..MapRecord::of(map) });
                // Not in the grid, whose cells are overlays.
                overlays.push(None);
                continue;
            }
            let [overlay_path, heatmap_path] =
                self.map_paths(&item.name, layer, map.method, map.rank.map(|_| map.class));
            let overlay = if need_overlay {
                Some(gradcam_viz::overlay(picture, map.map.view(), self.colormap, self.alpha)?)
            } else {
                None
            };
            let mut record = MapRecord::of(map);
            if let (true, Some(o)) = (self.wants(PictureKind::Overlay), &overlay) {
                files.push((overlay_path.clone(), encode(o, &overlay_path)?));
                record.overlay = Some(overlay_path);
            }
            if self.wants(PictureKind::Heatmap) {
                let heatmap = match &map.origin {
                    Some(origin) => {
                        let (h, w) = map.map.dim();
                        gradcam_viz::origin_view(origin.view(), h, w, self.colormap)?
                    }
                    None => self.colormap.apply(map.map.view()),
                };
                files.push((heatmap_path.clone(), encode(&heatmap, &heatmap_path)?));
                record.heatmap = Some(heatmap_path);
            }
            records.push(record);
            overlays.push(overlay.filter(|_| self.wants(PictureKind::Grid)));
        }
        let grid = if self.wants(PictureKind::Grid) && maps.iter().any(|m| m.pixels.is_none()) {
            let path = self.grid_path(&item.name);
            let sheet = self.grid(item, picture, num_classes, maps, &overlays)?;
            files.push((path.clone(), encode(&sheet, &path)?));
            Some(path)
        } else {
            None
        };
        Ok((records, grid, files))
    }

    /// One row per class and layer (the combination last): the photo labelled with both, then
    /// one overlay per method; a colorbar underneath.
    fn grid(
        &self,
        item: &Item,
        picture: &RgbImage,
        num_classes: usize,
        maps: &[MapResult],
        overlays: &[Option<RgbImage>],
    ) -> Result<RgbImage, CliError> {
        // FullGrad reads no given layer: its overlay stands in every row of its class, and makes a
        // row of its own only when no other method does.
        let whole_model = |m: &MapResult| !m.method.reads_layers();
        let only_whole_model = maps.iter().filter(|m| m.pixels.is_none()).all(whole_model);
        let mut rows: Vec<(Option<usize>, Option<&str>)> = Vec::new();
        for map in maps.iter().filter(|m| m.pixels.is_none() && (only_whole_model || !whole_model(m))) {
            let key = (map.rank, map.layer.as_ref().map(|(l, _)| l.as_str()));
            if !rows.contains(&key) {
                rows.push(key);
            }
        }
        let layer_pos = |layer: Option<&str>| {
            layer.map_or(usize::MAX, |l| self.layers.iter().position(|x| x == l).unwrap_or(0))
        };
        rows.sort_by_key(|(rank, layer)| (*rank, layer_pos(*layer)));
        let names = self.class_names(num_classes);
        let photo = gradcam_viz::fit_within(picture, GRID_CELL_SIDE);
        let mut cells: Vec<(String, RgbImage)> = Vec::new();
        for (rank, layer) in rows {
            let in_row: Vec<(&MapResult, &Option<RgbImage>)> = maps
                .iter()
                .zip(overlays)
                .filter(|(m, _)| m.pixels.is_none())
                .filter(|(m, _)| {
                    m.rank == rank && (whole_model(m) || m.layer.as_ref().map(|(l, _)| l.as_str()) == layer)
                })
                .collect();
            let Some((first, _)) = in_row.first() else { continue };
            let class = first.class;
            let class_label = match names.get(class) {
                Some(name) => format!("{class} {name}"),
                None => format!("class {class}"),
            };
            cells.push((
                format!(
                    "{}: {} · {class_label}",
                    item.name,
                    layer.unwrap_or(if only_whole_model { "whole model" } else { "combined" })
                ),
                photo.clone(),
            ));
            for method in &self.methods {
                if let Some((_, Some(overlay))) = in_row.iter().find(|(m, _)| m.method == *method) {
                    cells.push((method.to_string(), gradcam_viz::fit_within(overlay, GRID_CELL_SIDE)));
                }
            }
        }
        let options = GridOptions {
            columns: self.methods.iter().filter(|m| !m.is_pixel_space()).count() + 1,
            colorbar: Some(self.colormap),
            ..GridOptions::default()
        };
        Ok(gradcam_viz::grid_with(&cells, &options)?)
    }
}

/// File name stem of a map: `chelsea.blocks.6.gradcam`, with `combined` in place of the layer
/// for the combination of several layers, and `.c285` appended when `--top` chose the class. A
/// method that reads no given layer (guided backprop, FullGrad) has none: `chelsea.fullgrad`.
pub fn map_stem(name: &str, layer: Option<&str>, method: Method, class: Option<usize>) -> String {
    let class = class.map(|c| format!(".c{c}")).unwrap_or_default();
    match layer {
        None if !method.reads_layers() => format!("{name}.{method}{class}"),
        layer => format!("{name}.{}.{method}{class}", layer.unwrap_or("combined")),
    }
}

fn encode(picture: &RgbImage, path: &Path) -> Result<Vec<u8>, CliError> {
    let format = PictureFormat::from_path(path).unwrap_or(PictureFormat::Png);
    gradcam_viz::encode_picture(picture, format)
        .map_err(|source| gradcam_viz::VizError::Encode { path: path.to_path_buf(), source }.into())
}
