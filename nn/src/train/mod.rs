//! What training needs beyond the forward pass: the losses, the AdamW optimiser, and mixed
//! precision (autocast).

pub mod loss;
pub mod mixed;
pub mod optim;
