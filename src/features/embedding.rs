//! Static (model2vec-format) sentence embeddings: a token-id → vector table, mean-pooled.

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::error::LoadError;

/// An embedding table loaded from a model2vec `model.safetensors`.
///
/// triage pools token ids the featurizer already computed rather than calling a model2vec
/// runtime, so each prompt is tokenized once for both the token count and the embedding.
#[derive(Debug, Clone)]
pub struct StaticEmbeddings {
    table: Table,
    rows: usize,
    dim: usize,
    normalize: bool,
}

/// The table as stored in the file. int8 tables stay int8 in memory: a quarter of the memory
/// and of the bytes pooling reads, and their sums are exact integers, so pooling gives the
/// same vector it would from the table widened to f32.
#[derive(Debug, Clone)]
enum Table {
    F32(Vec<f32>),
    I8(Vec<i8>),
}

/// int8 rows are summed in i16 lanes (twice the lanes per instruction of i32) and spilled into
/// the f32 output every 255 rows: that many values of at most |-128| fit in an i16.
const I16_ROWS: usize = (i16::MAX as usize) / 128;

impl StaticEmbeddings {
    /// Builds a table from raw values (`rows * dim`, row-major).
    pub fn from_table(table: Vec<f32>, rows: usize, dim: usize, normalize: bool) -> Option<Self> {
        Self::new(Table::F32(table), rows, dim, normalize)
    }

    /// Builds a table from raw int8 values (`rows * dim`, row-major).
    pub fn from_i8_table(table: Vec<i8>, rows: usize, dim: usize, normalize: bool) -> Option<Self> {
        Self::new(Table::I8(table), rows, dim, normalize)
    }

    fn new(table: Table, rows: usize, dim: usize, normalize: bool) -> Option<Self> {
        let len = match &table {
            Table::F32(t) => t.len(),
            Table::I8(t) => t.len(),
        };
        (rows > 0 && dim > 0 && len == rows * dim).then_some(Self {
            table,
            rows,
            dim,
            normalize,
        })
    }

    /// Loads `model.safetensors` and `config.json` from a model2vec directory.
    ///
    /// Accepts float32 and int8 tables; int8 needs no scale because pooled vectors are
    /// normalized (a global scale cancels out).
    pub fn load(dir: &Path, bytes: &[u8]) -> Result<Self, LoadError> {
        let path = dir.join("model.safetensors");
        let tensors = SafeTensors::deserialize(bytes)
            .map_err(|e| LoadError::invalid(&path, format!("not a safetensors file: {e}")))?;
        let tensor = tensors
            .tensor("embeddings")
            .or_else(|_| tensors.tensor("0"))
            .map_err(|_| LoadError::invalid(&path, "no tensor named \"embeddings\""))?;
        let shape = tensor.shape();
        if shape.len() != 2 {
            return Err(LoadError::invalid(
                &path,
                format!("embeddings must be 2-D, got shape {shape:?}"),
            ));
        }
        let (rows, dim) = (shape[0], shape[1]);
        let data = tensor.data();
        let table = match tensor.dtype() {
            Dtype::F32 => Table::F32(
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            Dtype::I8 => Table::I8(data.iter().map(|&b| b as i8).collect()),
            other => {
                return Err(LoadError::invalid(
                    &path,
                    format!("embeddings dtype {other:?} is not supported (use float32 or int8)"),
                ));
            }
        };
        let config_path = dir.join("config.json");
        let normalize = match std::fs::read(&config_path) {
            Ok(b) => serde_json::from_slice::<serde_json::Value>(&b)
                .map_err(|e| LoadError::invalid(&config_path, e.to_string()))?
                .get("normalize")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(LoadError::io(&config_path, e)),
        };
        Self::new(table, rows, dim, normalize)
            .ok_or_else(|| LoadError::invalid(&path, "embeddings table is empty or mis-shaped"))
    }

    /// Vector length.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Vocabulary size.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Mean of the rows for `ids` (ids outside the table are skipped), L2-normalized if the
    /// model asks for it, written into `out` (length [`Self::dim`]).
    pub fn pool_into(&self, ids: &[u32], out: &mut [f32]) {
        out.fill(0.0);
        let dim = self.dim;
        let known = ids
            .iter()
            .map(|&id| id as usize)
            .filter(|&id| id < self.rows);
        let mut n = 0usize;
        match &self.table {
            Table::F32(table) => {
                for id in known {
                    for (o, v) in out.iter_mut().zip(&table[id * dim..(id + 1) * dim]) {
                        *o += v;
                    }
                    n += 1;
                }
            }
            Table::I8(table) => {
                let mut narrow = vec![0i16; dim];
                for id in known {
                    for (a, &v) in narrow.iter_mut().zip(&table[id * dim..(id + 1) * dim]) {
                        *a += i16::from(v);
                    }
                    n += 1;
                    if n % I16_ROWS == 0 {
                        spill(&mut narrow, out);
                    }
                }
                spill(&mut narrow, out);
            }
        }
        if n == 0 {
            return;
        }
        let inv = 1.0 / n as f32;
        out.iter_mut().for_each(|o| *o *= inv);
        if self.normalize {
            let norm = out.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            out.iter_mut().for_each(|o| *o /= norm);
        }
    }
}

/// Adds the i16 partial sums into `out` and clears them. The f32 sums stay exact integers
/// below 2^24 / 128 = 131,072 rows; the featurizer pools at most `MAX_EMBED_TOKENS`.
fn spill(narrow: &mut [i16], out: &mut [f32]) {
    for (o, a) in out.iter_mut().zip(narrow.iter_mut()) {
        *o += f32::from(*a);
        *a = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_is_the_normalized_mean_of_rows() {
        let e =
            StaticEmbeddings::from_table(vec![1.0, 0.0, 0.0, 1.0, 3.0, 3.0], 3, 2, true).unwrap();
        let mut out = [0.0; 2];
        e.pool_into(&[0, 1], &mut out);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!(
            (out[0] - h).abs() < 1e-6 && (out[1] - h).abs() < 1e-6,
            "{out:?}"
        );
        // Unknown ids are skipped, not a panic.
        e.pool_into(&[0, 99], &mut out);
        assert_eq!(out, [1.0, 0.0]);
        e.pool_into(&[], &mut out);
        assert_eq!(out, [0.0, 0.0]);
    }

    #[test]
    fn unnormalized_models_keep_the_mean() {
        let e = StaticEmbeddings::from_table(vec![1.0, 0.0, 3.0, 4.0], 2, 2, false).unwrap();
        let mut out = [0.0; 2];
        e.pool_into(&[0, 1], &mut out);
        assert_eq!(out, [2.0, 2.0]);
    }

    #[test]
    fn int8_tables_pool_exactly_like_their_f32_widening() {
        // Extreme values and more rows than one i16 accumulation holds (255), so the spill
        // into the f32 output is exercised; every sum is an integer, so the two paths must agree exactly.
        let (rows, dim) = (3, 4);
        let raw: Vec<i8> = vec![-128, 127, 5, 0, 127, 127, -1, -128, -128, -128, 100, 3];
        let wide: Vec<f32> = raw.iter().map(|&v| f32::from(v)).collect();
        for normalize in [true, false] {
            let a = StaticEmbeddings::from_i8_table(raw.clone(), rows, dim, normalize).unwrap();
            let b = StaticEmbeddings::from_table(wide.clone(), rows, dim, normalize).unwrap();
            for ids in [
                vec![],
                vec![1],
                vec![0, 2, 7],
                vec![1; 600],
                vec![2; 300],
                (0..900).map(|i| i % 4).collect(),
            ] {
                let (mut x, mut y) = ([0.0; 4], [0.0; 4]);
                a.pool_into(&ids, &mut x);
                b.pool_into(&ids, &mut y);
                assert_eq!(
                    x,
                    y,
                    "ids {:?}… normalize {normalize}",
                    &ids[..ids.len().min(3)]
                );
            }
        }
        let mut x = [0.0; 4];
        StaticEmbeddings::from_i8_table(raw, rows, dim, false)
            .unwrap()
            .pool_into(&[1; 600], &mut x);
        assert_eq!(x, [127.0, 127.0, -1.0, -128.0]);
    }

    #[test]
    fn mis_shaped_tables_are_refused() {
        assert!(StaticEmbeddings::from_table(vec![1.0; 5], 2, 2, true).is_none());
        assert!(StaticEmbeddings::from_i8_table(vec![1; 5], 2, 2, true).is_none());
        assert!(StaticEmbeddings::from_i8_table(vec![], 0, 2, true).is_none());
    }
}
