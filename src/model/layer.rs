//! The transformer recipe, written once: a layer's tensors (names, shapes, initialisation)
//! and its forward pass (pre-norm attention and SwiGLU blocks with residuals), then the
//! whole stack (embedding, layers, final norm, head). Every backend runs this same recipe
//! through [`Compute`]: candle tensors for training and any device (`model::candle`), host
//! slices for allocation-free decoding on the CPU (`model::host`).

use crate::config::ModelConfig;
use candle_core::Result;

/// How a tensor is initialised in a fresh run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// Norm weights: ones.
    One,
    /// N(0, init_std).
    Normal,
    /// A residual branch's output projection: N(0, init_std / sqrt(2·n_layers)) (GPT-2).
    Residual,
    /// Biases: zeros.
    Zero,
}

/// One tensor of the model: its name under the model's prefixes, shape and initialisation.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

/// The steps of the recipe as one backend runs them. An activation holds one row per token;
/// steps consume the activations they no longer need, so a backend can reuse their memory.
pub trait Compute {
    /// A weight as this backend reads it.
    type W;
    type Act;
    fn norm(&mut self, x: &Self::Act, w: &Self::W) -> Result<Self::Act>;
    /// x · wᵀ.
    fn linear(&mut self, x: Self::Act, w: &Self::W) -> Result<Self::Act>;
    /// x + b on every row.
    fn bias(&mut self, x: Self::Act, b: &Self::W) -> Result<Self::Act>;
    /// The fused q/k/v projection with each query head RMS-normed by `q_norm` and each key
    /// head by `k_norm` (weights over the head width); values untouched.
    fn head_norm(
        &mut self,
        qkv: Self::Act,
        q_norm: &Self::W,
        k_norm: &Self::W,
    ) -> Result<Self::Act>;
    /// Attention of layer `layer` from the fused q/k/v projection to the heads' outputs:
    /// RoPE, the pass's visibility and cache, softmax, value sum.
    fn attention(&mut self, qkv: Self::Act, layer: usize) -> Result<Self::Act>;
    /// SiLU(gate) ⊙ up of the fused gate/up projection.
    fn swiglu(&mut self, gate_up: Self::Act) -> Result<Self::Act>;
    /// The residual stream x + y.
    fn add(&mut self, x: Self::Act, y: Self::Act) -> Result<Self::Act>;
    /// The rows that get logits (all, unless the pass says otherwise).
    fn head_rows(&mut self, x: Self::Act) -> Result<Self::Act> {
        Ok(x)
    }
    /// An activation no step needs any more.
    fn release(&mut self, _x: Self::Act) {}
}

/// A layer's tensors: each entry is the field, its name under `layers.N.`, its shape and its
/// initialisation — the one list checkpoints, optimizer state and every backend follow.
/// Optional tensors exist only where the config's condition holds.
macro_rules! layer_tensors {
    (required { $($field:ident: $name:literal, $init:ident, |$c:ident| $shape:expr;)* }
     optional { $($ofield:ident: $oname:literal, $oinit:ident, |$oc:ident| $oshape:expr, if $cond:expr;)* }) => {
        /// One transformer layer's weights (`W` = how a backend holds a tensor).
        #[derive(Clone)]
        pub struct Layer<W> {
            $(pub $field: W,)*
            $(pub $ofield: Option<W>,)*
        }

        impl<W> Layer<W> {
            /// The layer's tensors in checkpoint order, names relative to the layer.
            pub fn spec(cfg: &ModelConfig) -> Vec<(&'static str, Vec<usize>, Init)> {
                let mut out = vec![$({ let $c = cfg; ($name, $shape, Init::$init) },)*];
                $({
                    let $oc = cfg;
                    if $cond {
                        out.push(($oname, $oshape, Init::$oinit));
                    }
                })*
                out
            }

            /// Build from tensors in `spec` order.
            pub fn take_from(cfg: &ModelConfig, it: &mut impl Iterator<Item = W>) -> Option<Self> {
                $(let $field = it.next()?;)*
                $(let $ofield = { let $oc = cfg; if $cond { Some(it.next()?) } else { None } };)*
                Some(Self { $($field,)* $($ofield,)* })
            }

            /// The same layer with every tensor converted (None if one does not convert).
            pub fn map<'a, U>(&'a self, mut f: impl FnMut(&'a W) -> Option<U>) -> Option<Layer<U>> {
                Some(Layer {
                    $($field: f(&self.$field)?,)*
                    $($ofield: match &self.$ofield { Some(w) => Some(f(w)?), None => None },)*
                })
            }
        }
    };
}

layer_tensors! {
    required {
        attn_norm: "attn_norm.weight", One, |c| vec![c.d_model];
        // Query, key and value projections fused into one matmul.
        wqkv: "attn.wqkv.weight", Normal, |c| vec![c.qkv_width(), c.d_model];
        wo: "attn.wo.weight", Residual, |c| vec![c.d_model, c.heads().q_width()];
        ffn_norm: "ffn_norm.weight", One, |c| vec![c.d_model];
        // SwiGLU gate and up projections fused.
        w_gate_up: "ffn.w_gate_up.weight", Normal, |c| vec![2 * c.d_ff, c.d_model];
        w_down: "ffn.w_down.weight", Residual, |c| vec![c.d_model, c.d_ff];
    }
    optional {
        bqkv: "attn.wqkv.bias", Zero, |c| vec![c.qkv_width()], if c.qkv_bias;
        q_norm: "attn.q_norm.weight", One, |c| vec![c.head_dim()], if c.qk_norm;
        k_norm: "attn.k_norm.weight", One, |c| vec![c.head_dim()], if c.qk_norm;
    }
}

impl<W> Layer<W> {
    /// x + attention(norm(x)), then x + SwiGLU(norm(x)).
    pub fn forward<C: Compute<W = W>>(&self, c: &mut C, x: C::Act, index: usize) -> Result<C::Act> {
        let h = c.norm(&x, &self.attn_norm)?;
        let mut qkv = c.linear(h, &self.wqkv)?;
        if let Some(b) = &self.bqkv {
            qkv = c.bias(qkv, b)?;
        }
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            qkv = c.head_norm(qkv, qn, kn)?;
        }
        let heads = c.attention(qkv, index)?;
        let out = c.linear(heads, &self.wo)?;
        let x = c.add(x, out)?;
        let h = c.norm(&x, &self.ffn_norm)?;
        let gate_up = c.linear(h, &self.w_gate_up)?;
        let act = c.swiglu(gate_up)?;
        let out = c.linear(act, &self.w_down)?;
        c.add(x, out)
    }
}

/// All of a model's weights.
#[derive(Clone)]
pub struct Weights<W> {
    pub embed: W,
    pub layers: Vec<Layer<W>>,
    pub norm: W,
    /// None: the head is the embedding (tied).
    pub head: Option<W>,
}

/// Every tensor of a model of this config, in checkpoint order.
pub fn tensor_specs(cfg: &ModelConfig) -> Vec<TensorSpec> {
    let (d, v) = (cfg.d_model, cfg.vocab_size);
    let spec = |name: String, shape: Vec<usize>, init| TensorSpec { name, shape, init };
    let mut out = vec![spec("embed.weight".into(), vec![v, d], Init::Normal)];
    for i in 0..cfg.n_layers {
        for (name, shape, init) in Layer::<()>::spec(cfg) {
            out.push(spec(format!("layers.{i}.{name}"), shape, init));
        }
    }
    out.push(spec("norm.weight".into(), vec![d], Init::One));
    if !cfg.tie_embeddings {
        out.push(spec("head.weight".into(), vec![v, d], Init::Normal));
    }
    out
}

impl<W> Weights<W> {
    /// Assemble from tensors given in `tensor_specs` order.
    pub fn from_ordered(cfg: &ModelConfig, tensors: Vec<W>) -> Option<Self> {
        let mut it = tensors.into_iter();
        let embed = it.next()?;
        let layers = (0..cfg.n_layers)
            .map(|_| Layer::take_from(cfg, &mut it))
            .collect::<Option<_>>()?;
        let norm = it.next()?;
        let head = if cfg.tie_embeddings {
            None
        } else {
            Some(it.next()?)
        };
        it.next().is_none().then_some(Self {
            embed,
            layers,
            norm,
            head,
        })
    }

    pub fn map<'a, U>(&'a self, mut f: impl FnMut(&'a W) -> Option<U>) -> Option<Weights<U>> {
        Some(Weights {
            embed: f(&self.embed)?,
            layers: self
                .layers
                .iter()
                .map(|l| l.map(&mut f))
                .collect::<Option<_>>()?,
            norm: f(&self.norm)?,
            head: match &self.head {
                Some(h) => Some(f(h)?),
                None => None,
            },
        })
    }

    pub fn head(&self) -> &W {
        self.head.as_ref().unwrap_or(&self.embed)
    }

    /// The stack on embedded tokens x: every layer, then the final norm and the head.
    pub fn run<C: Compute<W = W>>(&self, c: &mut C, x: C::Act) -> Result<C::Act> {
        let h = self.hidden(c, x)?;
        c.linear(h, self.head())
    }

    /// The stack up to the head: every layer, then the final norm.
    pub fn hidden<C: Compute<W = W>>(&self, c: &mut C, x: C::Act) -> Result<C::Act> {
        let mut x = x;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(c, x, i)?;
        }
        let x = c.head_rows(x)?;
        let h = c.norm(&x, &self.norm)?;
        c.release(x);
        Ok(h)
    }
}
