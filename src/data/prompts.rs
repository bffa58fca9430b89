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
