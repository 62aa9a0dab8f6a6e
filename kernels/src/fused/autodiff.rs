//! `Autodiff<B, C>`: each fused operation recorded as one node whose backward pass is one more
//! fused operation (elementwise ones checkpointed like Burn's memory-bound ops).

use super::*;

/// Unary fused ops: which one, with its scalar arguments.
#[derive(Debug, Clone, Copy)]
enum Unary {
    XSigmoid(f32, f32),
    Softmax(f32),
}

impl Unary {
    fn forward<B: FusedOps>(self, x: FloatTensor<B>) -> FloatTensor<B> {
        match self {
            Unary::XSigmoid(a, b) => B::x_sigmoid(x, a, b),
            Unary::Softmax(scale) => B::softmax_last(x, scale),
        }
    }

    fn backward<B: FusedOps>(self, x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
        match self {
            Unary::XSigmoid(a, b) => B::x_sigmoid_backward(x, grad, a, b),
            Unary::Softmax(scale) => B::softmax_last_backward(x, grad, scale),
        }
    }
}

#[derive(Debug)]
struct UnaryBackward(Unary);

impl<B: FusedOps> Backward<B, 1> for UnaryBackward {
    type State = NodeId;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(ops.state);
        unary::<B, _>(ops.parents, ops.node, grads, |grad| self.0.backward::<B>(x, grad));
    }
}

/// Records `op` on `x` as one memory-bound operation with its fused backward.
fn record_unary<B: FusedOps, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    op: Unary,
) -> FloatTensor<Autodiff<B, C>> {
    #[derive(Debug)]
    struct RetroUnary<B> {
        input: NodeId,
        op: Unary,
        _backend: PhantomData<B>,
    }
    impl<B: FusedOps> RetroForward for RetroUnary<B> {
        fn forward(&self, states: &mut BackwardStates, out_node: NodeId) {
            let x = states.get_state::<FloatTensor<B>>(&self.input);
            states.save(out_node, self.op.forward::<B>(x))
        }
    }
    let retro = RetroUnary::<B> { input: x.id(), op, _backend: PhantomData };
    match UnaryBackward(op)
        .prepare::<C>([x.node()])
        .memory_bound()
        .retro_forward(retro)
        .parents([&x])
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let state = prep.checkpoint(&x);
            prep.finish(state, op.forward::<B>(x.into_primitive()))
        }
        OpsKind::UnTracked(prep) => prep.finish(op.forward::<B>(x.into_primitive())),
    }
}

#[derive(Debug)]
struct LayerNormBackward(f64);

impl<B: FusedOps> Backward<B, 3> for LayerNormBackward {
    type State = (NodeId, NodeId);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(ops.state.0);
        let gamma: FloatTensor<B> = checkpointer.retrieve_node_output(ops.state.1);
        let grad = grads.consume::<B>(&ops.node);
        let (dx, dgamma, dbeta) = B::fused_layer_norm_backward(x, gamma, grad, self.0);
        let [x_node, gamma_node, beta_node] = ops.parents;
        for (node, grad) in [(x_node, dx), (gamma_node, dgamma), (beta_node, dbeta)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

#[derive(Debug)]
struct MatmulBackward;

impl<B: FusedOps> Backward<B, 2> for MatmulBackward {
    /// The checkpointed operands (each kept only when the other one needs it) and `rhs`'s shape.
    type State = (Option<NodeId>, Option<NodeId>, Shape);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let (lhs, rhs, rhs_shape) = ops.state;
        let lhs: Option<FloatTensor<B>> = lhs.map(|id| checkpointer.retrieve_node_output(id));
        let rhs: Option<FloatTensor<B>> = rhs.map(|id| checkpointer.retrieve_node_output(id));
        let t = |x: FloatTensor<B>| {
            let r = x.shape().num_dims();
            B::float_swap_dims(x, r - 2, r - 1)
        };
        let [lhs_node, rhs_node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let (Some(node), Some(rhs)) = (rhs_node, lhs) {
            let r = rhs_shape.num_dims();
            let shared =
                rhs_shape[..r - 2].iter().all(|&d| d == 1) && grad.shape()[..r - 2].iter().any(|&d| d != 1);
            let d = if shared {
                // One weight for the whole batch: its gradient is one product over all rows.
                let flat = |x: FloatTensor<B>| {
                    let s = x.shape();
                    let cols = s[r - 1];
                    B::float_reshape(x, Shape::from(vec![s.num_elements() / cols.max(1), cols]))
                };
                let d = B::fused_matmul(t(flat(rhs)), flat(grad.clone()));
                B::float_reshape(d, rhs_shape)
            } else {
                B::fused_matmul(t(rhs), grad.clone())
            };
            grads.register::<B>(node.id, d);
        }
        if let (Some(node), Some(rhs)) = (lhs_node, rhs) {
            grads.register::<B>(node.id, B::fused_matmul(grad, t(rhs)));
        }
    }
}

/// The bias add's backward: the output's gradient for `x`, its row sums for the bias.
#[derive(Debug)]
struct BiasAddBackward;

impl<B: FusedOps> Backward<B, 2> for BiasAddBackward {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [x_node, bias_node] = ops.parents;
        if let Some(node) = bias_node {
            grads.register::<B>(node.id, B::sum_rows(grad.clone()));
        }
        if let Some(node) = x_node {
            grads.register::<B>(node.id, grad);
        }
    }
}

/// The cast's backward: the gradient cast back to the input's dtype.
#[derive(Debug)]
struct CastBackward;

impl<B: FusedOps> Backward<B, 1> for CastBackward {
    type State = FloatDType;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let dtype = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| B::fused_cast(grad, dtype));
    }
}

impl<B: FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn bias_add(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        BiasAddBackward
            .prepare::<C>([x.node(), bias.node()])
            .compute_bound()
            .stateless(B::bias_add(x.into_primitive(), bias.into_primitive()))
    }

    fn fused_cast(x: FloatTensor<Self>, dtype: FloatDType) -> FloatTensor<Self> {
        match CastBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let from = x.dtype().into();
                prep.finish(from, B::fused_cast(x.into_primitive(), dtype))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_cast(x.into_primitive(), dtype)),
        }
    }

    fn fused_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
        let rhs_shape = rhs.shape();
        match MatmulBackward.prepare::<C>([lhs.node(), rhs.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let lhs_state = rhs_tracked.then(|| prep.checkpoint(&lhs));
                let rhs_state = lhs_tracked.then(|| prep.checkpoint(&rhs));
                let out = B::fused_matmul(lhs.into_primitive(), rhs.into_primitive());
                prep.finish((lhs_state, rhs_state, rhs_shape), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_matmul(lhs.into_primitive(), rhs.into_primitive()))
            }
        }
    }

    fn x_sigmoid(x: FloatTensor<Self>, a: f32, b: f32) -> FloatTensor<Self> {
        record_unary::<B, C>(x, Unary::XSigmoid(a, b))
    }

    fn softmax_last(x: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        record_unary::<B, C>(x, Unary::Softmax(scale))
    }

    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct RetroLayerNorm<B> {
            inputs: [NodeId; 3],
            eps: f64,
            _backend: PhantomData<B>,
        }
        impl<B: FusedOps> RetroForward for RetroLayerNorm<B> {
            fn forward(&self, states: &mut BackwardStates, out_node: NodeId) {
                let [x, gamma, beta] = self.inputs.map(|id| states.get_state::<FloatTensor<B>>(&id));
                states.save(out_node, B::fused_layer_norm(x, gamma, beta, self.eps))
            }
        }
        let retro =
            RetroLayerNorm::<B> { inputs: [x.id(), gamma.id(), beta.id()], eps, _backend: PhantomData };
        let prep = LayerNormBackward(eps)
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .memory_bound()
            .retro_forward(retro)
            .parents([&x, &gamma, &beta]);
        match prep.stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&gamma));
                let out = B::fused_layer_norm(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    eps,
                );
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_layer_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                eps,
            )),
        }
    }
}
