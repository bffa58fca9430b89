//! The fixed prompt set that decoding benchmarks and generation-quality evaluation sample from
//! (openings in the style of the default corpus).

pub const PROMPTS: &[&str] = &[
    "Alice was beginning to get very tired of sitting by her sister",
    "The Queen turned crimson with fury, and",
    "'Curiouser and curiouser!' cried Alice",
    "The Mock Turtle sighed deeply, and began",
    "There was a table set out under a tree",
    "The King and Queen of Hearts were seated on their throne",
    "'Would you tell me, please, which way I ought to go",
    "Once upon a time there were three little sisters",
];

/// Low-entropy probes, where a confident model can commit many tokens per pass: counting,
/// lists with a known order, and copying a passage the prompt already holds.
pub const PROBES: &[&str] = &[
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,",
    "one, two, three, four, five, six, seven, eight,",
    "Monday, Tuesday, Wednesday, Thursday, Friday,",
    "January, February, March, April, May, June,",
    "a, b, c, d, e, f, g, h, i, j, k,",
    "The cat sat on the mat and looked at the moon. The cat sat on the mat and looked at the moon. The cat",
    "Alice was beginning to get very tired of sitting by her sister on the bank. Alice was beginning to get",
    "red, green, blue, red, green, blue, red, green, blue,",
];

/// The probes that copy a passage the prompt already holds (the last three of [`PROBES`]).
pub const COPYING: usize = 3;

/// Held-out prose prefixes: `n` windows of `len` tokens spread evenly over a token stream
/// (a validation split).
pub fn prose_prefixes(stream: &[u32], n: usize, len: usize) -> Vec<Vec<u32>> {
    if stream.len() < len || n == 0 {
        return Vec::new();
    }
    let step = (stream.len() - len) / n.max(1);
    (0..n)
        .map(|i| stream[i * step..i * step + len].to_vec())
        .collect()
}
