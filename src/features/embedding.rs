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
    table: Vec<f32>,
    rows: usize,
    dim: usize,
    normalize: bool,
}

impl StaticEmbeddings {
    /// Builds a table from raw values (`rows * dim`, row-major).
    pub fn from_table(table: Vec<f32>, rows: usize, dim: usize, normalize: bool) -> Option<Self> {
        (rows > 0 && dim > 0 && table.len() == rows * dim).then_some(Self {
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
        let table: Vec<f32> = match tensor.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::I8 => data.iter().map(|&b| b as i8 as f32).collect(),
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
        Self::from_table(table, rows, dim, normalize)
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
        let mut n = 0usize;
        for &id in ids {
            let id = id as usize;
            if id >= self.rows {
                continue;
            }
            let row = &self.table[id * self.dim..(id + 1) * self.dim];
            for (o, v) in out.iter_mut().zip(row) {
                *o += v;
            }
            n += 1;
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
    fn mis_shaped_tables_are_refused() {
        assert!(StaticEmbeddings::from_table(vec![1.0; 5], 2, 2, true).is_none());
    }
}
