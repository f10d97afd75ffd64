//! The seven linear projections of a decoder layer, as a type: their Hugging Face names, the
//! block they sit in, their order, and a table holding one value per projection.

use std::ops::{Index, IndexMut};

/// A projection of a decoder layer, in layer order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Projection {
    /// Every projection, in layer order.
    pub const ALL: [Projection; 7] = [
        Projection::Q,
        Projection::K,
        Projection::V,
        Projection::O,
        Projection::Gate,
        Projection::Up,
        Projection::Down,
    ];

    /// The module name transformers and PEFT use (`q_proj`, …, `down_proj`).
    pub fn name(self) -> &'static str {
        match self {
            Projection::Q => "q_proj",
            Projection::K => "k_proj",
            Projection::V => "v_proj",
            Projection::O => "o_proj",
            Projection::Gate => "gate_proj",
            Projection::Up => "up_proj",
            Projection::Down => "down_proj",
        }
    }

    /// The projection a module name stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Every module name, in layer order.
    pub fn names() -> impl Iterator<Item = &'static str> {
        Self::ALL.into_iter().map(Self::name)
    }

    /// `self_attn` or `mlp`: the block of a Hugging Face layer the projection belongs to.
    pub fn block(self) -> &'static str {
        match self {
            Projection::Q | Projection::K | Projection::V | Projection::O => "self_attn",
            Projection::Gate | Projection::Up | Projection::Down => "mlp",
        }
    }

    /// The Hugging Face module path in layer `layer`, e.g. `model.layers.0.self_attn.q_proj`.
    pub fn module_path(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}.{}", self.block(), self.name())
    }

    /// Position in layer order.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Projection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One value per projection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PerProjection<T>([T; 7]);

impl<T> PerProjection<T> {
    /// The value of each projection from `f`.
    pub fn from_fn(mut f: impl FnMut(Projection) -> T) -> Self {
        Self(Projection::ALL.map(&mut f))
    }

    /// The value of each projection from `f`, stopping at the first error.
    pub fn try_from_fn<E>(mut f: impl FnMut(Projection) -> Result<T, E>) -> Result<Self, E> {
        let mut values = Vec::with_capacity(Projection::ALL.len());
        for p in Projection::ALL {
            values.push(f(p)?);
        }
        Ok(Self(
            values.try_into().ok().expect("one value per projection"),
        ))
    }

    /// `(projection, value)` in layer order.
    pub fn iter(&self) -> impl Iterator<Item = (Projection, &T)> {
        Projection::ALL.into_iter().zip(self.0.iter())
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Projection, &mut T)> {
        Projection::ALL.into_iter().zip(self.0.iter_mut())
    }

    /// The values in layer order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }
}

impl<T> Index<Projection> for PerProjection<T> {
    type Output = T;
    fn index(&self, p: Projection) -> &T {
        &self.0[p.index()]
    }
}

impl<T> IndexMut<Projection> for PerProjection<T> {
    fn index_mut(&mut self, p: Projection) -> &mut T {
        &mut self.0[p.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_layer_order() {
        for (i, p) in Projection::ALL.into_iter().enumerate() {
            assert_eq!(p.index(), i);
            assert_eq!(Projection::from_name(p.name()), Some(p));
        }
        assert_eq!(Projection::from_name("lm_head"), None);
        assert_eq!(
            Projection::Down.module_path(3),
            "model.layers.3.mlp.down_proj"
        );
    }
}
