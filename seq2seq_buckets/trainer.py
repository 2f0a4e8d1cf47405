"""The training loop: proportional bucket sampling, progress, checkpoints, evaluation.

train_dir holds: hparams.json, the SentencePiece models, checkpoints (the last K
as model.ckpt-STEP, the best dev BLEU apart under best/), TensorBoard events and
metrics.jsonl (one JSON line per evaluation). Rerunning the same command
resumes from the latest checkpoint: global step, learning rate, plateau history
and patience live in checkpointed variables, and the bucket draw for a step
depends only on (seed, step).
"""

import collections
import json
import math
import os
import shutil
import signal
import time

import numpy as np
import sacrebleu
import tensorflow as tf

from seq2seq_buckets import decoding
from seq2seq_buckets import graphs
from seq2seq_buckets import hparams as hparams_lib
from seq2seq_buckets import manifest as manifest_lib
from seq2seq_buckets import prepare as prepare_lib
from seq2seq_buckets import progress
from seq2seq_buckets import shards
from seq2seq_buckets import vocab
from seq2seq_buckets.batches import DECODE_BATCH_SIZE, BatchedInput
from seq2seq_buckets.errors import UserError
from seq2seq_buckets.sampler import BucketSampler

tf1 = tf.compat.v1

SRC_MODEL, TGT_MODEL = "source.spm.model", "target.spm.model"
CHECKPOINT_PREFIX = "model.ckpt"
BEST_DIR = "best"
CORES = os.cpu_count() or 1

TrainOptions = collections.namedtuple("TrainOptions", [
    "max_steps", "max_time_minutes", "steps_per_checkpoint", "steps_per_bleu",
    "steps_per_log", "patience", "keep_checkpoints", "dev_bleu_lines"])


class TrainingDiverged(UserError):
  """The loss became NaN or Inf."""


def session_config(intra_op_threads=CORES, inter_op_threads=2):
  """Threads (by default all cores inside an op, two ops at a time), and no Grappler.

  Grappler's rewrites of these large unrolled graphs cost seconds on the first run
  of every bucket (5.7 s vs 1.4 s for a (18, 20) bucket of the reference model)
  and, measured side by side, made steps no faster. TensorFlow keeps one pool of
  threads inside ops per process, made once: by the first session, unless something
  came first (building a tf.function, as the inference graph does, makes it with a
  thread per core). Later intra_op_threads settings do not change it.
  """
  config = tf1.ConfigProto(intra_op_parallelism_threads=intra_op_threads,
                           inter_op_parallelism_threads=inter_op_threads)
  config.graph_options.rewrite_options.disable_meta_optimizer = True
  return config


def resolve_hparams(train_dir, manifest, overrides):
  """Saved hparams on resume (explicit overrides must agree), else defaults + overrides + data."""
  saved = hparams_lib.load(train_dir)
  data = {"src_vocab_size": manifest["vocab"]["source"]["size"],
          "tgt_vocab_size": manifest["vocab"]["target"]["size"],
          "buckets": [[b["source_length"], b["target_length"]] for b in manifest["buckets"]]}
  if saved is not None:
    for key, value in {**overrides, **data}.items():
      if getattr(saved, key) != value:
        raise UserError(f"{train_dir} holds a model with {key}={getattr(saved, key)!r}, not "
                        f"{value!r}; use a new --train_dir or drop the flag")
    return saved
  return hparams_lib.HParams.from_dict({**overrides, **data}).check()


def _copy_vocab(data_dir, manifest, train_dir):
  for side, name in (("source", SRC_MODEL), ("target", TGT_MODEL)):
    src = os.path.join(data_dir, manifest["vocab"][side]["model"])
    dst = os.path.join(train_dir, name)
    if os.path.exists(dst):
      if manifest_lib.sha256_file(dst) != manifest["vocab"][side]["sha256"]:
        raise UserError(f"{train_dir} was trained with another {side} SentencePiece model "
                        f"than {data_dir} holds")
    else:
      shutil.copyfile(src, dst)


class _Stopper:
  """Turns SIGINT/SIGTERM into a flag the loop checks, so it can checkpoint and exit."""

  def __init__(self):
    self.signal = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGINT, signal.SIGTERM):
      self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, _):
    self.signal = signal.Signals(signum).name

  def __exit__(self, *_):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)


def train_batches(manifest, data_dir, hp):
  """Per bucket, the get-next tensors (a BatchedInput) of its shuffled, repeating shards,
  or None for an empty bucket. Call inside the training graph."""
  nexts = []
  for b, bucket in enumerate(manifest["buckets"]):
    files = [os.path.join(data_dir, f) for f in bucket["shards"]]
    if not files:
      nexts.append(None)
      continue
    dataset = shards.bucket_dataset(files, tuple(hp.buckets[b]), hp.batch_size, seed=hp.seed + b)
    nexts.append(tf1.data.make_one_shot_iterator(dataset).get_next())
  return nexts


def _read_dev_batches(manifest, data_dir, batch_size):
  """All dev batches as NumPy BatchedInputs, per bucket (dev sets are small)."""
  graph = tf.Graph()
  out = []
  with graph.as_default():
    nexts = []
    for bucket in manifest["dev"]["buckets"]:
      files = [os.path.join(data_dir, f) for f in bucket["shards"]]
      shape = (bucket["source_length"], bucket["target_length"])
      if not files:
        nexts.append(None)
        continue
      dataset = shards.bucket_dataset(files, shape, batch_size, shuffle=False, repeat=False)
      nexts.append(tf1.data.make_one_shot_iterator(dataset).get_next())
    with tf1.Session(graph=graph, config=session_config()) as session:
      for nxt in nexts:
        batches = []
        while nxt is not None:
          try:
            batches.append(_fill_batch(BatchedInput(*session.run(nxt)), batch_size))
          except tf.errors.OutOfRangeError:
            break
        out.append(batches)
  return out


def _fill_batch(batch, batch_size):
  """Pads a short last batch with empty rows (all weights 0) to the graph's batch size."""
  missing = batch_size - len(batch.source_lengths)
  return BatchedInput(*[np.pad(x, [(0, missing)] + [(0, 0)] * (x.ndim - 1)) for x in batch])


def _feed(inputs, batch):
  return dict(zip(inputs, batch))


def _summary(writer, step, values):
  writer.add_summary(tf1.Summary(value=[tf1.Summary.Value(tag=k, simple_value=float(v))
                                        for k, v in values.items()]), step)


def train(*, data_dir, train_dir, overrides, options, log=print):
  """Trains (or resumes) a model on a prepared directory; returns the last metrics dict."""
  manifest = manifest_lib.read_manifest(data_dir)
  os.makedirs(train_dir, exist_ok=True)
  hp = resolve_hparams(train_dir, manifest, overrides)
  _copy_vocab(data_dir, manifest, train_dir)
  hparams_lib.save(train_dir, hp)
  log(f"hyperparameters: {json.dumps(json.loads(hp.to_json()), sort_keys=True)}")

  start = time.time()
  tg = graphs.build_training_graph(hp, max_checkpoints=options.keep_checkpoints)
  sizes = [b["pairs"] for b in manifest["buckets"]]
  with tg.graph.as_default():
    nexts = train_batches(manifest, data_dir, hp)
    best_saver = tf1.train.Saver(max_to_keep=1, save_relative_paths=True)
  tg.graph.finalize()
  dev_batches = _read_dev_batches(manifest, data_dir, hp.batch_size)
  log(f"built {len(hp.buckets)} bucket graphs in {time.time() - start:.1f}s")

  src_spm = vocab.load_spm(os.path.join(train_dir, SRC_MODEL))
  tgt_spm = vocab.load_spm(os.path.join(train_dir, TGT_MODEL))
  dev_src = _read_lines(os.path.join(data_dir, prepare_lib.DEV_SRC), options.dev_bleu_lines)
  dev_ref = _read_lines(os.path.join(data_dir, prepare_lib.DEV_REF), options.dev_bleu_lines)
  dev_src_ids = src_spm.encode(dev_src)

  session = tf1.Session(graph=tg.graph, config=session_config())
  latest = tf.train.latest_checkpoint(train_dir)
  if latest:
    tg.saver.restore(session, latest)
    log(f"resumed from {latest}")
  else:
    session.run(tg.init)
  with tg.graph.as_default():
    writer = tf1.summary.FileWriter(train_dir)
  sampler = BucketSampler(sizes, hp.seed)
  pairs = manifest["written"]
  state = tg.state
  step = int(session.run(state.global_step))
  metrics_path = os.path.join(train_dir, "metrics.jsonl")

  def save():
    path = tg.saver.save(session, os.path.join(train_dir, CHECKPOINT_PREFIX), global_step=step)
    return path

  def evaluate():
    nll = tokens = 0.0
    per_bucket = {}
    for b, batches in enumerate(dev_batches):
      b_nll = b_tokens = 0.0
      for batch in batches:
        feed = _feed(tg.buckets[b].inputs, batch)
        feed[tg.model.dropout_rate] = 0.0
        n, t = session.run([tg.buckets[b].nll_sum, tg.buckets[b].tokens], feed)
        b_nll, b_tokens = b_nll + n, b_tokens + t
      if b_tokens:
        per_bucket[b] = math.exp(min(float(b_nll / b_tokens), 50))
      nll, tokens = nll + b_nll, tokens + b_tokens
    dev_loss = float(nll / max(tokens, 1.0))  # nan/inf when training diverged
    result = {"step": step, "dev_loss": dev_loss, "dev_ppl": math.exp(min(dev_loss, 50)),
              "dev_ppl_per_bucket": per_bucket}
    if options.steps_per_bleu and step % options.steps_per_bleu == 0 and dev_src:
      ids, _ = decoding.greedy_ids(session, tg.greedy, hp.buckets, dev_src_ids,
                                   DECODE_BATCH_SIZE, workers=CORES)
      hyps = [tgt_spm.decode(i) for i in ids]
      result["dev_bleu"] = sacrebleu.corpus_bleu(hyps, [dev_ref]).score
    return result

  def on_evaluation(result):
    """Plateau decay, best score, patience -> (improved, stop early)."""
    lr, saved = session.run([state.learning_rate, state.eval_state])
    if result["dev_loss"] > max(saved["recent_dev_losses"]) and \
        hp.learning_rate_decay_factor < 1.0:
      lr = session.run(state.decay_learning_rate)
      log(f"dev loss plateau: learning rate decayed to {lr:.3g}")
    update = {"recent_dev_losses": np.append(saved["recent_dev_losses"][1:], result["dev_loss"]),
              "best_dev_loss": min(saved["best_dev_loss"], result["dev_loss"])}
    if "dev_bleu" in result:
      improved = result["dev_bleu"] > saved["best_bleu"]
      update["best_bleu"] = max(saved["best_bleu"], result["dev_bleu"])
    else:
      improved = result["dev_loss"] < saved["best_dev_loss"]
    bad = 0 if improved else int(saved["bad_evals"]) + 1
    update["bad_evals"] = bad
    session.run([state.eval_setters[k][1] for k in update],
                {state.eval_setters[k][0]: v for k, v in update.items()})
    result.update(learning_rate=float(lr), improved=bool(improved), bad_evals=int(bad))
    return improved, options.patience and bad >= options.patience

  window = collections.defaultdict(float)
  train_start = time.time()
  start_step = step
  metrics = {}
  stop_reason = None
  with _Stopper() as stopper:
    while True:
      if step >= options.max_steps:
        stop_reason = f"reached --max_steps={options.max_steps}"
      elif options.max_time_minutes and time.time() - train_start >= 60 * options.max_time_minutes:
        stop_reason = f"reached --max_time_minutes={options.max_time_minutes}"
      elif stopper.signal:
        stop_reason = f"received {stopper.signal}"
      if stop_reason:
        break
      b = sampler.draw(step)
      t0 = time.time()
      batch = session.run(nexts[b])
      t1 = time.time()
      bt = tg.buckets[b]
      # train perplexity from the true NLL (the objective may be label-smoothed); with
      # sampled softmax no full softmax runs in training, so the sampled loss stands in
      loss, norm, tokens, step = session.run(
          [bt.loss if hp.num_samples else bt.nll_sum, bt.grad_norm, bt.tokens, bt.update],
          _feed(bt.inputs, batch))
      if not hp.num_samples:
        loss /= max(tokens, 1.0)
      t2 = time.time()
      step = int(step)
      if not np.isfinite(loss) or not np.isfinite(norm):
        raise TrainingDiverged(
            f"loss became {'NaN' if np.isnan(loss) else 'Inf'} at step {step} (bucket {b}); "
            f"the last good checkpoint stays in {train_dir}; lower --learning_rate")
      window["steps"] += 1
      window["loss"] += loss * tokens
      window["tokens"] += tokens
      window["pairs"] += len(batch.source_lengths)
      window["norm"] += norm
      window["wait"] += t1 - t0
      window["time"] += t2 - t0
      window[f"bucket_{b}_loss"] += loss
      window[f"bucket_{b}_n"] += 1
      if step % options.steps_per_log == 0:
        _log_window(log, writer, step, window, session.run(state.learning_rate), pairs,
                    options, train_start, start_step, manifest)
        window.clear()
      if step % options.steps_per_checkpoint == 0:
        metrics = _checkpoint_and_evaluate(log, save, evaluate, on_evaluation, writer,
                                           metrics_path, best_saver, session, train_dir, step)
        if metrics.get("stop"):
          stop_reason = f"no improvement in {options.patience} evaluations (--patience)"
          break
  if step % options.steps_per_checkpoint:
    path = save()
    log(f"saved {path} ({stop_reason})")
  else:
    log(f"stopped at step {step}: {stop_reason}")
  writer.close()
  session.close()
  return metrics


def _checkpoint_and_evaluate(log, save, evaluate, on_evaluation, writer, metrics_path,
                             best_saver, session, train_dir, step):
  result = evaluate()
  if not math.isfinite(result["dev_loss"]):
    raise TrainingDiverged(
        f"dev loss became {result['dev_loss']} at step {step}; this state was not saved and "
        f"the last good checkpoint stays in {train_dir}; lower --learning_rate")
  path = save()
  improved, stop = on_evaluation(result)
  if improved and "dev_bleu" in result:
    best_saver.save(session, os.path.join(train_dir, BEST_DIR, CHECKPOINT_PREFIX),
                    global_step=step, latest_filename="checkpoint")
  bleu = f", dev BLEU {result['dev_bleu']:.2f}" if "dev_bleu" in result else ""
  log(f"step {step}: saved {os.path.basename(path)}; dev ppl {result['dev_ppl']:.2f}{bleu}"
      f"{' (best)' if improved else ''}")
  values = {"dev/perplexity": result["dev_ppl"]}
  values.update({f"dev/perplexity_bucket_{b}": p for b, p in result["dev_ppl_per_bucket"].items()})
  if "dev_bleu" in result:
    values["dev/bleu"] = result["dev_bleu"]
  _summary(writer, step, values)
  writer.flush()
  result["time"] = time.time()
  with open(metrics_path, "a", encoding="utf-8") as f:
    f.write(json.dumps(result) + "\n")
  result["stop"] = bool(stop)
  return result


def _log_window(log, writer, step, window, lr, pairs, options, train_start, start_step, manifest):
  steps = window["steps"]
  step_time = window["time"] / steps
  tok_s = window["tokens"] / window["time"]
  ppl = math.exp(min(window["loss"] / max(window["tokens"], 1), 50))
  epoch = step * window["pairs"] / steps / max(pairs, 1)
  elapsed = time.time() - train_start
  rate = (step - start_step) / max(elapsed, 1e-9)
  remaining = [(options.max_steps - step) / rate] if rate > 0 else []
  if options.max_time_minutes:
    remaining.append(60 * options.max_time_minutes - elapsed)
  eta = progress.duration(max(0.0, min(remaining))) if remaining else "?"
  log(f"step {step} epoch {epoch:.2f} lr {lr:.3g} step-time {step_time * 1000:.0f}ms "
      f"tok/s {tok_s:.0f} ppl {ppl:.2f} grad-norm {window['norm'] / steps:.2f} "
      f"input-wait {window['wait'] / window['time']:.1%} ETA {eta}")
  values = {"train/perplexity": ppl, "train/learning_rate": lr, "train/tokens_per_s": tok_s,
            "train/step_time_s": step_time, "train/grad_norm": window["norm"] / steps,
            "train/padding_efficiency": manifest["padding_efficiency"]}
  for b in range(len(manifest["buckets"])):
    if window[f"bucket_{b}_n"]:
      values[f"train/perplexity_bucket_{b}"] = math.exp(
          min(window[f"bucket_{b}_loss"] / window[f"bucket_{b}_n"], 50))
  _summary(writer, step, values)


def _read_lines(path, limit):
  with open(path, encoding="utf-8") as f:
    lines = [line.rstrip("\r\n") for line in f]
  return lines[:limit] if limit else lines
