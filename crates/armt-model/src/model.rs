//! `Qwen2_5_VLForConditionalGeneration`: vision tower + decoder + LM head, built from
//! `config.json` and filled from the checkpoint's safetensors.

use crate::checkpointing::{grad_mode_enabled, HiddenStates};
use crate::config::Qwen25VlConfig;
use crate::layers::Linear;
use crate::rope::{rope_index, RopeIndex};
use crate::text::{LayerCache, TextModel};
use crate::vision::VisionTransformer;
use crate::weights::{load_into, WeightLayout};
use crate::ModelError;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// f32 on CPU (bf16 matmuls are ~60x slower there), bf16 on CUDA.
pub fn default_kind_for(device: Device) -> Kind {
    match device {
        Device::Cuda(_) => Kind::BFloat16,
        _ => Kind::Float,
    }
}

/// Keys and values of every decoder layer for the tokens processed so far.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: i64,
}

impl KvCache {
    /// Number of tokens cached (including padding slots of a batch).
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The whole model. Variables live in a `VarStore` under the hub names (`visual.*`, `model.*`,
/// `lm_head.weight`), so an optimizer can be built over `var_store()`.
pub struct Qwen25Vl {
    vs: nn::VarStore,
    pub config: Qwen25VlConfig,
    visual: VisionTransformer,
    text: TextModel,
    lm_head: Option<Linear>,
    layout: WeightLayout,
    grad_checkpointing: bool,
}

impl std::fmt::Debug for Qwen25Vl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qwen25Vl")
            .field("config", &self.config)
            .field("layout", &self.layout)
            .finish()
    }
}

impl Qwen25Vl {
    /// Builds the model from `config` with zero weights (to be loaded or trained).
    pub fn new(config: Qwen25VlConfig, device: Device, kind: Kind) -> Self {
        let mut vs = nn::VarStore::new(device);
        // Set before creating variables, so a 7B model is never allocated in f32 first.
        vs.set_kind(kind);
        let root = vs.root();
        let visual = VisionTransformer::new(&root / "visual", &config.vision);
        let text = TextModel::new(&root / "model", &config.text);
        let lm_head = (!config.tie_word_embeddings).then(|| {
            Linear::new(
                &root / "lm_head",
                config.text.hidden_size,
                config.text.vocab_size,
                false,
            )
        });
        Self {
            vs,
            config,
            visual,
            text,
            lm_head,
            layout: WeightLayout::Hub,
            grad_checkpointing: false,
        }
    }

    /// Loads `dir/config.json` and the safetensors checkpoint in `dir`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self, ModelError> {
        let config = Qwen25VlConfig::from_file(&dir.join("config.json"))?;
        let mut model = Self::new(config, device, kind);
        // A tied checkpoint may still carry lm_head.weight (a copy of the embeddings).
        let optional: &[&str] = if model.lm_head.is_none() {
            &["lm_head.weight"]
        } else {
            &[]
        };
        model.layout = load_into(dir, &model.vs.variables(), optional)?;
        Ok(model)
    }

    /// Random weights as transformers initialises them (normal(0, std) for matrices and
    /// embeddings, ones for norms, zeros for biases), from `seed` alone.
    pub fn init_random(&mut self, std: f64, seed: i64) {
        let _g = tch::no_grad_guard();
        tch::manual_seed(seed);
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0)); // a fixed order, so the seed alone decides
        for (name, mut v) in vars {
            if name.ends_with(".bias") {
                let _ = v.zero_();
            } else if v.dim() == 1 {
                let _ = v.fill_(1.0);
            } else {
                v.copy_(&(Tensor::randn(v.size(), (Kind::Float, v.device())) * std).to_kind(v.kind()));
            }
        }
    }

    /// Full forward of right-padded rows (`rows[b]` real tokens each), with the images of all
    /// rows in order: logits `[B, max_len, vocab]` (padding positions are garbage). Gradients flow.
    pub fn forward_rows(
        &self,
        rows: &[&[i64]],
        pixel_values: Option<&Tensor>,
        grid_thw: &[[i64; 3]],
        pad_id: i64,
    ) -> Result<Tensor, ModelError> {
        let (ids, positions) = self.rows_inputs(rows, grid_thw, pad_id)?;
        let image_embeds = match pixel_values {
            Some(pv) if !grid_thw.is_empty() => Some(self.encode_images(pv, grid_thw)?),
            _ => None,
        };
        let embeds = self.embed(&ids, image_embeds.as_ref())?;
        // Right padding: a real token's causal window never reaches a padding slot, so plain
        // causal attention without a mask is exact for every real position.
        let hidden = self.text.forward_embeds(&embeds, &positions, None, None);
        Ok(self.logits(&hidden))
    }

    /// Like [`Self::forward_rows`] but stops at the final hidden states `[B, max_len, hidden]`
    /// (the LM head is left to the caller, which applies it to the positions it needs). With
    /// [`Self::set_grad_checkpointing`] on and autograd recording, decoder layers and vision
    /// blocks keep only their inputs and are recomputed by [`HiddenStates::backward`].
    pub fn forward_rows_hidden(
        &self,
        rows: &[&[i64]],
        pixel_values: Option<&Tensor>,
        grid_thw: &[[i64; 3]],
        pad_id: i64,
    ) -> Result<HiddenStates<'_>, ModelError> {
        let (ids, positions) = self.rows_inputs(rows, grid_thw, pad_id)?;
        let checkpoint = self.grad_checkpointing && grad_mode_enabled();
        let mut stretches = Vec::new();
        let image_embeds = match pixel_values {
            Some(pv) if !grid_thw.is_empty() => {
                if checkpoint && self.vision_trains() {
                    let (merged, stretch) = self.visual.forward_checkpointed(pv, grid_thw)?;
                    stretches.push(stretch);
                    Some(merged)
                } else {
                    Some(self.encode_images(pv, grid_thw)?)
                }
            }
            _ => None,
        };
        let embeds = self.embed(&ids, image_embeds.as_ref())?;
        let hidden = if checkpoint {
            let (hidden, stretch) = self.text.forward_embeds_checkpointed(&embeds, &positions, None);
            // Backward order: the decoder's stretch first, then the vision tower's.
            stretches.insert(0, stretch);
            hidden
        } else {
            self.text.forward_embeds(&embeds, &positions, None, None)
        };
        Ok(HiddenStates { hidden, stretches })
    }

    /// Recompute decoder layers and vision blocks in the backward pass instead of keeping their
    /// activations (used by [`Self::forward_rows_hidden`] only).
    pub fn set_grad_checkpointing(&mut self, on: bool) {
        self.grad_checkpointing = on;
    }

    pub fn grad_checkpointing(&self) -> bool {
        self.grad_checkpointing
    }

    /// The LM head's weight `[vocab, hidden]` (the embeddings when tied).
    pub fn lm_head_weight(&self) -> &Tensor {
        match &self.lm_head {
            Some(head) => &head.weight,
            None => &self.text.embed_tokens,
        }
    }

    fn vision_trains(&self) -> bool {
        self.vs
            .variables()
            .iter()
            .any(|(name, t)| name.starts_with("visual.") && t.requires_grad())
    }

    /// Token ids `[B, T]` (padded with `pad_id`) and M-RoPE positions `[3, B, T]` of right-padded
    /// rows whose images, in order, have grids `grid_thw`.
    fn rows_inputs(
        &self,
        rows: &[&[i64]],
        grid_thw: &[[i64; 3]],
        pad_id: i64,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let b = rows.len() as i64;
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0) as i64;
        let mut ids = Vec::with_capacity((b * t) as usize);
        let mut pos = vec![0i64; (3 * b * t) as usize];
        let mut next_grid = 0usize;
        for (r, row) in rows.iter().enumerate() {
            let index = self.row_rope_index(row, grid_thw, &mut next_grid)?;
            for j in 0..t as usize {
                ids.push(row.get(j).copied().unwrap_or(pad_id));
                if let Some(p) = index.positions.get(j) {
                    for a in 0..3 {
                        pos[(a * b as usize + r) * t as usize + j] = p[a];
                    }
                }
            }
        }
        if next_grid != grid_thw.len() {
            return Err(ModelError::Input(format!(
                "{} image grids for {next_grid} images in the rows",
                grid_thw.len()
            )));
        }
        let device = self.device();
        let ids = Tensor::from_slice(&ids).view([b, t]).to_device(device);
        let positions = Tensor::from_slice(&pos).view([3, b, t]).to_device(device);
        Ok((ids, positions))
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// The naming layout of the checkpoint this model was loaded from.
    pub fn layout(&self) -> WeightLayout {
        self.layout
    }

    pub(crate) fn text(&self) -> &TextModel {
        &self.text
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn kind(&self) -> Kind {
        self.text.embed_tokens.kind()
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: (0..self.text.num_layers())
                .map(|_| LayerCache::default())
                .collect(),
            len: 0,
        }
    }

    /// Encodes images: `[merged tokens, hidden]` in the order of `grid_thw`.
    pub fn encode_images(&self, pixel_values: &Tensor, grid_thw: &[[i64; 3]]) -> Result<Tensor, ModelError> {
        self.visual.forward(pixel_values, grid_thw)
    }

    /// Token embeddings with each `<|image_pad|>` replaced, in order, by a row of `image_embeds`.
    pub fn embed(&self, input_ids: &Tensor, image_embeds: Option<&Tensor>) -> Result<Tensor, ModelError> {
        let ids = input_ids.to_device(self.device());
        let embeds = self.text.embed(&ids);
        let is_image = ids.eq(self.config.image_token_id);
        let n_pads = is_image.sum(Kind::Int64).int64_value(&[]);
        match image_embeds {
            None if n_pads == 0 => Ok(embeds),
            None => Err(ModelError::Input(format!("{n_pads} image tokens but no images"))),
            Some(img) => {
                if img.size()[0] != n_pads {
                    return Err(ModelError::Input(format!(
                        "{n_pads} image tokens in the text but {} image embeddings",
                        img.size()[0]
                    )));
                }
                let mask = is_image.unsqueeze(-1).expand_as(&embeds);
                Ok(embeds.masked_scatter(&mask, &img.to_kind(embeds.kind())))
            }
        }
    }

    /// Full forward of unpadded sequences `[B, S]` whose images, across rows in order, have
    /// grids `grid_thw`. Returns logits `[B, S, vocab]` in the model's dtype.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        pixel_values: Option<&Tensor>,
        grid_thw: &[[i64; 3]],
    ) -> Result<Tensor, ModelError> {
        let positions = self.positions(input_ids, grid_thw)?.0;
        let image_embeds = match pixel_values {
            Some(pv) if !grid_thw.is_empty() => Some(self.encode_images(pv, grid_thw)?),
            _ => None,
        };
        let embeds = self.embed(input_ids, image_embeds.as_ref())?;
        let hidden = self.text.forward_embeds(&embeds, &positions, None, None);
        Ok(self.logits(&hidden))
    }

    /// M-RoPE positions `[3, B, S]` of unpadded rows and each row's decode offset.
    pub fn positions(
        &self,
        input_ids: &Tensor,
        grid_thw: &[[i64; 3]],
    ) -> Result<(Tensor, Vec<i64>), ModelError> {
        let size = input_ids.size();
        if size.len() != 2 {
            return Err(ModelError::Input(format!(
                "input_ids must be [batch, seq], got {size:?}"
            )));
        }
        let ids = input_ids.to_device(Device::Cpu).to_kind(Kind::Int64);
        let mut next_grid = 0usize;
        let mut all = Vec::with_capacity((3 * size[0] * size[1]) as usize);
        let mut per_axis: [Vec<i64>; 3] = Default::default();
        let mut deltas = Vec::new();
        for b in 0..size[0] {
            let row: Vec<i64> = Vec::<i64>::try_from(ids.get(b)).map_err(ModelError::Torch)?;
            let r = self.row_rope_index(&row, grid_thw, &mut next_grid)?;
            for p in &r.positions {
                for a in 0..3 {
                    per_axis[a].push(p[a]);
                }
            }
            deltas.push(r.delta);
        }
        if next_grid != grid_thw.len() {
            return Err(ModelError::Input(format!(
                "{} image grids given but the text's image tokens use only {next_grid}",
                grid_thw.len()
            )));
        }
        for axis in per_axis {
            all.extend(axis);
        }
        Ok((
            Tensor::from_slice(&all)
                .view([3, size[0], size[1]])
                .to_device(self.device()),
            deltas,
        ))
    }

    /// Runs `embeds` `[B, S, hidden]` at `positions` `[3, B, S]` after the tokens in `cache`,
    /// appending their keys and values. `key_padding`: optional `[B, cache.len() + S]` bool,
    /// false on padding slots. Returns the final hidden states `[B, S, hidden]`.
    pub fn forward_cached(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        key_padding: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Tensor {
        let (b, s) = (embeds.size()[0], embeds.size()[1]);
        let past = cache.len;
        let total = past + s;
        let mask = if past == 0 && key_padding.is_none() {
            None // plain causal attention over the new tokens
        } else {
            // Query i (absolute index past + i) sees keys j <= past + i that are not padding.
            let device = embeds.device();
            let q_idx = Tensor::arange(s, (Kind::Int64, device)).view([s, 1]) + past;
            let k_idx = Tensor::arange(total, (Kind::Int64, device)).view([1, total]);
            let mut m = k_idx.le_tensor(&q_idx).view([1, 1, s, total]);
            if let Some(kp) = key_padding {
                m = m.logical_and(&kp.to_device(device).to_kind(Kind::Bool).view([b, 1, 1, total]));
            }
            Some(m)
        };
        let hidden = self
            .text
            .forward_embeds(embeds, positions, mask.as_ref(), Some(&mut cache.layers));
        cache.len = total;
        hidden
    }

    /// M-RoPE positions of one unpadded row whose images are the next grids of `grid_thw`
    /// (from `*next_grid` on, as many as its image-token runs need); advances `*next_grid`.
    fn row_rope_index(
        &self,
        row: &[i64],
        grid_thw: &[[i64; 3]],
        next_grid: &mut usize,
    ) -> Result<RopeIndex, ModelError> {
        let merge = self.config.vision.spatial_merge_size as i64;
        let pads = row.iter().filter(|&&t| t == self.config.image_token_id).count() as i64;
        let (start, mut taken) = (*next_grid, 0i64);
        while taken < pads && *next_grid < grid_thw.len() {
            let g = grid_thw[*next_grid];
            taken += g[0] * g[1] * g[2] / (merge * merge);
            *next_grid += 1;
        }
        rope_index(
            row,
            &grid_thw[start..*next_grid],
            self.config.image_token_id,
            merge,
        )
    }

    /// LM head (or the tied embeddings) over hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => hidden.linear::<Tensor>(&self.text.embed_tokens, None),
        }
    }
}
