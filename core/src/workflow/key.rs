//! Hierarchical checkpoint keys.

use std::fmt;

/// A call's position: its index in its parent's sequence of calls, prefixed by the
/// parent's own key. The third call of a job is `2`; the first call made inside it is
/// `2/0`. Replaying an outer call never shifts the numbering of later ones, because each
/// called handler numbers its own calls from zero.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CheckpointKey(String);

impl CheckpointKey {
    /// The key of the job's top-level scope (no position).
    pub fn root() -> Self {
        CheckpointKey(String::new())
    }

    /// The key of call number `index` inside this scope.
    pub fn child(&self, index: u32) -> Self {
        if self.0.is_empty() {
            CheckpointKey(index.to_string())
        } else {
            CheckpointKey(format!("{}/{index}", self.0))
        }
    }

    /// A key as stored (for keys beside the positional ones, such as deadlines).
    pub(crate) fn from_stored(key: String) -> Self {
        CheckpointKey(key)
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// How deep the key is (0 for the root, 1 for top-level calls).
    pub fn depth(&self) -> usize {
        if self.0.is_empty() {
            0
        } else {
            self.0.split('/').count()
        }
    }
}

impl fmt::Display for CheckpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_nest_by_position() {
        let root = CheckpointKey::root();
        assert_eq!(root.child(2).as_str(), "2");
        assert_eq!(root.child(2).child(0).as_str(), "2/0");
        assert_eq!(root.child(2).child(0).child(11).depth(), 3);
        assert_eq!(root.depth(), 0);
    }
}
