"""The attention encoder-decoder: variables created once, graph pieces built per bucket.

Shapes: B batch, I source bucket length, O target bucket length, H = hparams.size,
E = hparams.embedding_size, V = target vocabulary. All pieces of every bucket
read the same variables, so the trainable variable set does not depend on the
number of buckets.

Encoder: source embedding -> layer 0 (bidirectional, H/2 each way, or H) ->
layers 1..N-1 (H), unrolled to I steps over right-padded input. Real positions
never see padding: the forward direction reads left to right and its final state
is taken at the last real step; the backward direction runs on each sentence
reversed within its length (tf.reverse_sequence).
Decoder (Luong-style with input feeding): layer-0 input is [target embedding;
previous attentional output]; the top hidden state queries the attention; the
attentional output tanh(W [context; h]) feeds the output projection.
"""

import collections

import tensorflow as tf

from seq2seq_buckets import beam_search
from seq2seq_buckets import screening
from seq2seq_buckets.attention import MASKED, Attention, mask_bias
from seq2seq_buckets.cells import make_cell, read
from seq2seq_buckets.gradients import apply_mask, graph_constant, weight_matmul
from seq2seq_buckets.gradients import transposed as transposed_kernel
from seq2seq_buckets.vocab import EOS_ID, GO_ID

tf1 = tf.compat.v1

# memory/keys [B, I, H] float32; mask_bias [B, I] float32 (0 real, -1e9 padding);
# states: one tuple per layer.
EncoderOutput = collections.namedtuple("EncoderOutput", ["memory", "keys", "mask_bias", "states"])
# loss: scalar training objective (mean over real target tokens);
# nll_sum: summed negative log-likelihood of real tokens; tokens: real target tokens.
LossOutput = collections.namedtuple("LossOutput", ["loss", "nll_sum", "tokens"])
# Logits per block in the greedy decoder's argmax (see row_argmax).
ARGMAX_BLOCK = 64


class Seq2SeqModel:
  """Holds the variables; its methods build graph pieces that share them.

  Dropout (rate `dropout_rate`, hparams.dropout unless fed; feed 0.0 to evaluate)
  is applied to embeddings, between layers and to the attentional output in
  `loss` only. Decoder dropout masks are drawn once per sequence ([O * layers, B, H])
  so an unrolled step costs one multiply per dropout site. decoding_caches: for
  decoding graphs (see `refresh_caches`). sharing: a Seq2SeqModel whose
  variables and dropout rate this one uses, through reads of its own (see
  `with_own_reads`).
  """

  def __init__(self, hparams, decoding_caches=False, sharing=None):
    self.hp = hp = hparams
    self._traced = {}  # see _traced_function
    self.dropout_rate = (sharing.dropout_rate if sharing else
                         tf1.placeholder_with_default(float(hp.dropout), [], "dropout_rate"))
    initializer = tf1.random_uniform_initializer(-0.1, 0.1, seed=hp.seed)
    with tf1.variable_scope("model", initializer=initializer, reuse=bool(sharing)):
      self.source_embedding = read(tf1.get_variable(
          "source_embedding", [hp.src_vocab_size, hp.embedding_size]))
      self.target_embedding = read(tf1.get_variable(
          "target_embedding", [hp.tgt_vocab_size, hp.embedding_size]))
      with tf1.variable_scope("encoder"):
        if hp.bidirectional_encoder:
          self.encoder_first = (make_cell(hp.cell, hp.embedding_size, hp.size // 2, "layer_0_fw"),
                                make_cell(hp.cell, hp.embedding_size, hp.size // 2, "layer_0_bw"))
        else:
          self.encoder_first = (make_cell(hp.cell, hp.embedding_size, hp.size, "layer_0"),)
        self.encoder_rest = [make_cell(hp.cell, hp.size, hp.size, f"layer_{l}")
                             for l in range(1, hp.num_layers)]
      with tf1.variable_scope("decoder"):
        feed = hp.size if hp.input_feeding else 0
        self.decoder_cells = [make_cell(hp.cell, hp.embedding_size + feed, hp.size, "layer_0")]
        self.decoder_cells += [make_cell(hp.cell, hp.size, hp.size, f"layer_{l}")
                               for l in range(1, hp.num_layers)]
        self.attention = Attention(hp.attention, hp.size)
        if hp.tie_embeddings:
          self.output_weights = self.target_embedding
        else:
          self.output_weights = read(tf1.get_variable(
              "output_weights", [hp.tgt_vocab_size, hp.size]))
        self.output_bias = read(tf1.get_variable(
            "output_bias", [hp.tgt_vocab_size], initializer=tf1.zeros_initializer()))
        # [H, V]: a matmul with transpose_b is several times slower on this CPU for
        # the few rows of a decoding step. Training transposes once per run; decoding
        # keeps the transpose in a local variable that `refresh_caches` fills
        # once after a restore (a per-run transpose would copy V x H floats per step),
        # and so every cell's step weights (see LSTMCell.cache_step_weights).
        transposed = tf.transpose(self.output_weights)
        # Decoding's copy has the bias as one more row, [H + 1, V], which a column of
        # ones in the outputs picks up (see `logits`): one pass over [N, V] fewer.
        self._bias_row = decoding_caches
        self.screen = None  # see screening.py
        if decoding_caches:
          kernel = tf.concat([transposed, self.output_bias[None]], 0)
          self.output_kernel, fill = _local_copy("output_kernel_cache", kernel)
          fills = [fill]
          screen_sizes = screening.sizes(hp.tgt_vocab_size, hp.size)
          if screen_sizes:
            self.screen, screen_fills = screening.screen_caches(kernel, *screen_sizes,
                                                                _local_copy)
            fills += screen_fills
          for prefix, cell in self._named_cells():
            embedding = (self.target_embedding if cell is self.decoder_cells[0] else
                         self.source_embedding if cell in self.encoder_first else None)
            fills += cell.cache_step_weights(
                lambda name, value, prefix=prefix: _local_copy(f"{prefix}_{name}", value),
                embedding)
          self.refresh_caches = tf.group(fills)
        else:
          self.output_kernel = transposed
          transposed_kernel(transposed, known=self.output_weights)

  def _named_cells(self):
    """[(a name unique in the model, cell)] for every layer of the encoder and decoder."""
    first = ["layer_0_fw", "layer_0_bw"] if self.hp.bidirectional_encoder else ["layer_0"]
    rest = [f"layer_{l}" for l in range(1, self.hp.num_layers)]
    return ([(f"encoder_{name}", cell) for name, cell in
             zip(first + rest, list(self.encoder_first) + self.encoder_rest)] +
            [(f"decoder_layer_{l}", cell) for l, cell in enumerate(self.decoder_cells)])

  def with_own_reads(self):
    """A model over the same variables whose weight tensors are reads of its own.

    A bucket's graph built from it is the only consumer of those reads, so
    `gradients.gradients` of its loss traverses that bucket's ops alone rather than
    every bucket's graph and update that consumes the shared reads.
    """
    return Seq2SeqModel(self.hp, sharing=self)

  def _dropout(self, x, training):
    """x with dropout applied when training (and hparams.dropout > 0)."""
    if not training or not self.hp.dropout:
      return x
    return apply_mask(x, self._dropout_mask(tf.shape(x)))

  def _dropout_mask(self, shape):
    keep = 1.0 - self.dropout_rate
    return tf.floor(keep + tf.random.uniform(shape)) / keep

  # --- encoder -------------------------------------------------------------------------
  def encode(self, encoder_inputs, source_lengths, training):
    """encoder_inputs [B, I] int32 (I static when training), source_lengths [B] int32 ->
    EncoderOutput."""
    hp = self.hp
    if not training:
      # Decoding batches are sorted by length: the positions past the longest source
      # are padding, which need neither encoding nor attention.
      encoder_inputs = encoder_inputs[:, :tf.reduce_max(source_lengths)]
    steps = encoder_inputs.shape[1] or tf.shape(encoder_inputs)[1]
    if hp.reverse_source:
      encoder_inputs = tf.reverse_sequence(encoder_inputs, source_lengths, seq_axis=1, batch_axis=0)
    x = tf.transpose(encoder_inputs)  # [I, B]
    if not self.encoder_first[0].takes_ids:  # see LSTMCell.cache_step_weights
      x = self._dropout(tf.nn.embedding_lookup(self.source_embedding, x), training)  # [I, B, E]
    last = tf.stack([tf.maximum(source_lengths - 1, 0), tf.range(tf.shape(x)[1])], axis=1)

    def run(cell, inputs, backward=False):
      if backward:
        inputs = tf.reverse_sequence(inputs, source_lengths, seq_axis=0, batch_axis=1)
      outputs, states = cell.sequence(inputs, cell.zero_state(tf.shape(inputs)[1]), training)
      final = tuple(tf.gather_nd(s, last) for s in states)
      if backward:
        outputs = tf.reverse_sequence(outputs, source_lengths, seq_axis=0, batch_axis=1)
      return outputs, final

    if hp.bidirectional_encoder:
      fw_out, fw_state = run(self.encoder_first[0], x)
      bw_out, bw_state = run(self.encoder_first[1], x, backward=True)
      x = tf.concat([fw_out, bw_out], axis=2)
      states = [tuple(tf.concat([f, b], 1) for f, b in zip(fw_state, bw_state))]
    else:
      x, state = run(self.encoder_first[0], x)
      states = [state]
    for cell in self.encoder_rest:
      x, state = run(cell, self._dropout(x, training))
      states.append(state)
    memory = tf.transpose(x, [1, 0, 2])
    return EncoderOutput(memory, self.attention.keys(memory), mask_bias(source_lengths, steps),
                         states)

  # --- decoder -------------------------------------------------------------------------
  def embed_target(self, ids, training=False):
    """ids [T, B] int32 -> target embeddings [T, B, E] (dropout applied when training)."""
    return self._dropout(tf.nn.embedding_lookup(self.target_embedding, ids), training)

  def decoder_step(self, embedded, previous_output, states, encoded, dropout_masks=None,
                   training=False):
    """One decoder step.

    embedded [B, E]: this step's input token embedding (its piece ids [B] int32 when
    the first decoder layer takes ids, see LSTMCell.cache_step_weights);
    previous_output [B, H]: the previous attentional output, zeros at the start;
    states: one tuple per layer; dropout_masks: None, or a list of `layers` [B, H] masks: one per
    layer above the first, the last for the output; training: True when built for
    the loss (differentiable; see LSTMCell.step) -> (attentional output [B, H], new
    states).
    """
    inputs = [embedded, previous_output] if self.hp.input_feeding else [embedded]
    x, state = self.decoder_cells[0].step(states[0], inputs, training)
    new_states = [state]
    for layer, (cell, state) in enumerate(zip(self.decoder_cells[1:], states[1:]), start=1):
      if dropout_masks is not None:
        x = apply_mask(x, dropout_masks[layer - 1])
      x, state = cell.step(state, [x], training)
      new_states.append(state)
    output, _ = self.attention(x, encoded.memory, encoded.keys, encoded.mask_bias)
    if dropout_masks is not None:
      output = apply_mask(output, dropout_masks[-1])
    return output, new_states

  def logits(self, outputs):
    """outputs [N, H] -> logits [N, V]. In decoding graphs the bias is the cached
    kernel's last row: beam 5 decoded test_2016_flickr 205 against 199 sentences/s with
    a separate bias add, greedy 907 against 899 (m11 model, same process, alternating
    passes, same outputs)."""
    if self._bias_row:
      return tf.matmul(tf.pad(outputs, [[0, 0], [0, 1]], constant_values=1.0), self.output_kernel)
    return weight_matmul(outputs, self.output_kernel) + self.output_bias

  def next_output(self, tokens, previous_output, states, encoded):
    """A decoding step (no dropout) from the previous pieces tokens [N] int32 ->
    (attentional output [N, H], new states)."""
    first = tokens if self.decoder_cells[0].takes_ids else self.embed_target(tokens[None])[0]
    return self.decoder_step(first, previous_output, states, encoded)

  def best_pieces(self, outputs, screened=True):
    """outputs [N, H] -> [N] int32: the argmax of `logits` (first maximum); through the
    screen of screening.py when the model has one and `screened` is set."""
    whole = lambda: row_argmax(self.logits(outputs))
    if screened and self.screen is not None:
      return tf.cond(tf.shape(outputs)[0] >= screening.SCREEN_ROWS,
                     lambda: screening.screened_argmax(outputs, self.screen, row_argmax), whole)
    return whole()

  def initial_output(self, encoded):
    """Zeros [B, H]: the 'previous attentional output' of the first decoder step."""
    return tf.zeros_like(encoded.memory[:, 0, :])

  # --- per-bucket graphs ---------------------------------------------------------------
  def loss(self, batch):
    """batch: BatchedInput of [B, I] / [B, O] tensors -> LossOutput, masked by target_weights.

    Built with dropout at `dropout_rate`: feed 0.0 to evaluate. `loss` is the
    training objective (sampled softmax or label smoothing when set); `nll_sum`
    always uses the full softmax.
    """
    hp = self.hp
    steps = batch.decoder_inputs.shape[1]
    encoded = self.encode(batch.encoder_inputs, batch.source_lengths, training=True)
    embedded = tf.unstack(self.embed_target(tf.transpose(batch.decoder_inputs), True),
                          num=steps)  # O x [B, E]
    masks = [None] * steps
    if hp.dropout:
      # one unstack for all O x layers masks [B, H] (indexing each would add ops per step)
      shape = [steps * hp.num_layers, tf.shape(batch.decoder_inputs)[0], hp.size]
      flat = tf.unstack(self._dropout_mask(shape), num=steps * hp.num_layers)
      masks = [flat[t * hp.num_layers:(t + 1) * hp.num_layers] for t in range(steps)]
    output, states, outputs = self.initial_output(encoded), encoded.states, []
    for t in range(steps):
      output, states = self.decoder_step(embedded[t], output, states, encoded, masks[t],
                                         training=True)
      outputs.append(output)
    # Only real target positions reach the projection: padding costs no softmax FLOPs.
    weights = tf.reshape(batch.target_weights, [-1])
    real = tf.where(weights > 0)[:, 0]  # [N] positions in [B*O]
    flat = tf.gather(tf.reshape(tf.stack(outputs, axis=1), [-1, hp.size]), real)  # [N, H]
    targets = tf.gather(tf.reshape(batch.targets, [-1]), real)
    weights = tf.gather(weights, real)
    tokens = tf.reduce_sum(weights)
    logits = self.logits(flat)
    if hp.label_smoothing:
      xent, nll = _smoothed_cross_entropy(logits, targets, hp.label_smoothing)
    else:
      nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
      xent = nll
      if hp.num_samples:
        xent = tf1.nn.sampled_softmax_loss(
            weights=self.output_weights, biases=self.output_bias, labels=targets[:, None],
            inputs=flat, num_sampled=hp.num_samples, num_classes=hp.tgt_vocab_size,
            seed=hp.seed)
    loss = tf.reduce_sum(xent * weights) / tf.maximum(tokens, 1.0)
    return LossOutput(loss, tf.reduce_sum(nll * weights), tokens)

  def greedy(self, encoded, max_steps, compiled=False):
    """encoded: `encode` of B sentences, max_steps int32 scalar -> ids [B, T] int32.

    Feeds back each step's argmax; a tf.while_loop over the decoder step (built
    once, not unrolled, and traced once for all buckets) stops after max_steps steps
    or when every row has produced EOS, so T <= max_steps. A row's ids after its
    first EOS are EOS.

    compiled: the loop compiled by XLA. For one sentence its steps take less than
    half the time (TensorFlow's MatMul is slow for a single row here), but XLA
    compiles anew for every input shape, so it is meant for a fixed batch size.
    """
    loop = self._compiled_greedy if compiled else self._greedy
    function = self._traced_function(loop, encoded, [tf.TensorSpec([], tf.int32)], compiled)
    steps, ids = function(*self._encoding_parts(encoded, compiled), max_steps)
    return tf.transpose(ids[:steps])

  def _compiled_greedy(self, fixed, carried, max_steps):
    """_greedy in XLA's terms: a fixed-size id array (the largest target bucket)."""
    return self._greedy(fixed, carried, max_steps, most=self._largest_bucket()[1])

  def _greedy(self, fixed, carried, max_steps, most=None):
    """The greedy loop; fixed, carried: see _encoding_parts -> (steps run [] int32, ids
    [T, B] int32). most: None for a growing id array (T = steps) from which rows that
    have produced EOS leave the loop (later steps run fewer rows); else the array's
    fixed size (T = most, zeros after the first `steps` rows) and every row stays,
    repeating EOS (the fixed shapes XLA needs)."""
    batch = tf.shape(fixed[0])[0]
    fixed_shapes = most is not None

    def step(t, token, carried, fixed, rows, ids):
      output, states = self.next_output(token, *carried, EncoderOutput(*fixed, None))
      # XLA compiles fixed shapes only: its loop takes the whole projection
      new = self.best_pieces(output, screened=not fixed_shapes)
      if fixed_shapes:
        new = tf.where(tf.equal(token, EOS_ID), EOS_ID, new)
        return t + 1, new, (output, states), fixed, rows, ids.write(t, new)
      # rows [m]: where the running rows sit in the batch; ended ones read EOS
      ids = ids.write(t, tf.tensor_scatter_nd_update(tf.fill([batch], EOS_ID), rows[:, None],
                                                     new))
      going = tf.not_equal(new, EOS_ID)
      running = (new, (output, states), fixed, rows)
      keep = lambda x: tf.gather(x, tf.reshape(tf.where(going), graph_constant((-1,))))
      running = tf.cond(tf.reduce_all(going), lambda: running,
                        lambda: tf.nest.map_structure(keep, running))
      return (t + 1, *running, ids)

    def unfinished(t, token, *unused):
      if fixed_shapes:
        return (t < max_steps) & tf.reduce_any(tf.not_equal(token, EOS_ID))
      return (t < max_steps) & (tf.size(token) > 0)

    ids = (tf.TensorArray(tf.int32, size=0, dynamic_size=True) if most is None
           else tf.TensorArray(tf.int32, size=most))
    start = (tf.constant(0), tf.fill([batch], GO_ID), carried, fixed, tf.range(batch), ids)
    end = tf.while_loop(unfinished, step, start, maximum_iterations=most)
    return end[0], end[-1].stack()

  def _largest_bucket(self):
    """(I, O): the most source positions and decoder steps of any bucket."""
    return tuple(max(lengths) for lengths in zip(*self.hp.buckets))

  def _traced_function(self, python_function, encoded, specs, compiled=False):
    """python_function(fixed, carried, *args) (see _encoding_parts; args matching specs)
    as a tf.function, traced once for any batch and source length and called by every
    bucket: a while loop this size takes 0.1-0.4 s to build. compiled: by XLA, which
    compiles it again (~1-2 s) for every new input shape and every value of an argument
    that fixes a shape (beam_size, n_best)."""
    if python_function not in self._traced:
      size = self.hp.size
      rows = lambda x: tf.TensorSpec([None] + x.shape[1:], x.dtype)  # any batch
      signature = [(tf.TensorSpec([None, None, size]), tf.TensorSpec([None, None, size]),
                    tf.TensorSpec([None, None])),
                   (tf.TensorSpec([None, size]), tf.nest.map_structure(rows, encoded.states))]
      self._traced[python_function] = tf.function(
          python_function, input_signature=signature + specs, jit_compile=compiled,
          autograph=False)
    return self._traced[python_function]

  def _encoding_parts(self, encoded, compiled=False):
    """encoded -> [fixed (memory, keys, mask_bias), carried (initial output, states)], the
    arguments of the traced decoding loops; compiled: the fixed part padded to the largest
    source bucket, so that XLA compiles once for all buckets (padding gets attention
    probability exactly 0)."""
    memory, keys, bias = encoded.memory, encoded.keys, encoded.mask_bias
    if compiled:
      extra = self._largest_bucket()[0] - tf.shape(memory)[1]
      memory, keys = (tf.pad(x, [[0, 0], [0, extra], [0, 0]]) for x in (memory, keys))
      bias = tf.pad(bias, [[0, 0], [0, extra]], constant_values=MASKED)
    return [(memory, keys, bias), (self.initial_output(encoded), encoded.states)]

  def beam_search(self, encoded, limits, beam_size, n_best, alpha, compiled=False):
    """encoded: `encode` of n sentences; limits [n] int32: their most output pieces;
    beam_size, n_best int32 scalars; alpha float32 scalar (GNMT length penalty) ->
    beam_search.Found, the whole search one tf.while_loop (see beam_search.search),
    traced once for all buckets. compiled: the search of fixed shapes, compiled by
    XLA, as `greedy` does (for one sentence; XLA compiles anew for each beam_size
    and n_best, and T is the largest target bucket).
    """
    specs = [tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32),
             tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.float32)]
    search = self._compiled_beam_search if compiled else self._beam_search
    function = self._traced_function(search, encoded, specs, compiled)
    return beam_search.Found(*function(*self._encoding_parts(encoded, compiled), limits,
                                       beam_size, n_best, alpha))

  def _compiled_beam_search(self, fixed, carried, limits, beam_size, n_best, alpha):
    """_beam_search of fixed shapes, which XLA compiles."""
    return self._beam_search(fixed, carried, limits, beam_size, n_best, alpha,
                             most=self._largest_bucket()[1])

  def _beam_search(self, fixed, carried, limits, beam_size, n_best, alpha, most=None):
    """beam_search.search with this model's decoder step; fixed: (memory, keys, mask_bias),
    carried: (previous output, states); most: see beam_search.search."""

    def step(tokens, carried, fixed):
      output, states = self.next_output(tokens, *carried, EncoderOutput(*fixed, None))
      return self.logits(output), (output, states)

    return tuple(beam_search.search(step, carried, fixed, limits, beam_size, n_best, alpha,
                                    most))


def row_argmax(logits):
  """logits [N, V] -> [N] int32: each row's first maximum, as tf.argmax.

  When V is static and a multiple of ARGMAX_BLOCK, in two passes: the maximum of each
  block of ARGMAX_BLOCK logits (a reduction TensorFlow vectorizes), then the first best
  block and the first maximum in it. On one thread, for [64, 8000] in a loop: 80-110 us
  against tf.argmax's 220-250 (its pair reduction is not vectorized).
  """
  vocab = logits.shape[1]
  if vocab is None or vocab % ARGMAX_BLOCK:
    return tf.argmax(logits, axis=1, output_type=tf.int32)
  blocks = tf.reshape(logits, [-1, vocab // ARGMAX_BLOCK, ARGMAX_BLOCK])
  best = tf.argmax(tf.reduce_max(blocks, axis=2), axis=1, output_type=tf.int32)
  inside = tf.argmax(tf.gather(blocks, best, batch_dims=1), axis=1, output_type=tf.int32)
  return best * ARGMAX_BLOCK + inside


def _local_copy(name, value):
  """A local variable `name` (not saved, not trained) for a copy of the tensor value ->
  (its read, the op that fills it with value)."""
  cache = tf1.get_variable(name, value.shape, trainable=False,
                           collections=[tf1.GraphKeys.LOCAL_VARIABLES],
                           initializer=tf1.zeros_initializer())
  return read(cache), cache.assign(value).op


def _smoothed_cross_entropy(logits, targets, smoothing):
  """Label-smoothed cross-entropy: logits [N, V] float32, targets [N] int32 ->
  (xent [N] against the target distribution (1 - smoothing) * one_hot + smoothing / V,
  nll [N] of the targets, not differentiated).

  One fused softmax kernel gives xent and its gradient (softmax - labels); nll
  follows from xent = nll + smoothing * (target logit - mean logit). The sparse
  cross-entropy plus a log_softmax for the smoothing term, as before, made more
  passes over [N, V] each way: smoothing then cost the recipe model a fifth of a
  training step, now about a fifteenth.
  """
  vocab = logits.shape[1]
  labels = tf.one_hot(targets, vocab, on_value=1.0 - smoothing + smoothing / vocab,
                      off_value=smoothing / vocab)
  xent = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
  target_logits = tf.gather(logits, targets[:, None], batch_dims=1)[:, 0]
  margin = target_logits - tf.reduce_mean(logits, axis=1)
  return xent, tf.stop_gradient(xent - smoothing * margin)
