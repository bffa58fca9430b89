//! Named enum values, one table per enum: what configs, the command line and requests write.

/// An enum written by name in configs, on the command line and in requests: every value
/// with its name (as serde writes it) and a one-line description, in one table.
pub trait Choice: Copy + PartialEq + 'static {
    const ALL: &'static [(Self, &'static str, &'static str)];

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|c| c.0 == self)
            .map(|c| c.1)
            .expect("every value is listed")
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|c| c.1 == name).map(|c| c.0)
    }

    fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|c| c.1).collect()
    }
}
