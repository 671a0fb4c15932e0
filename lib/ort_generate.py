"""Beam search over an optimum ORTModelForSeq2SeqLM's ONNX Runtime sessions that drops each sentence from the
batch once its result is final, as fairseq's search does.

transformers' generate (what optimum runs) keeps every sentence of a batch in the decoder until the last one
ends: at batch 32, the decoder runs 32 x beam rows to the longest output of the batch, several times the
work fairseq does. This is transformers' vectorized beam search (GenerationMixin._beam_search, 4.57) step
for step: the same log-softmax scores and logits processors (the model's GenerationConfig: <pad>
suppressed, min_new_tokens, </s> forced at the last position), the same 2 x beam candidates, finished
hypotheses kept by score / length ** length_penalty, and the same stopping rules. A sentence whose beam
slots are full (early_stopping=True) or whose running beams can no longer beat its finished ones
receives no more hypotheses in transformers either, so removing it changes nothing: the output is
generate's, token for token (tests/test_hf_m2m100.py), as long as one sentence's logits do not depend
on the others in its batch (fp32; dynamic int8 quantizes activations with one scale per batch, so there
the batch's make-up moves the logits a little, in both searches).

    translations = translate(model, sp, ["A man is sleeping."], num_beams=4)   # raw text in and out
"""
import torch

from lib.recipes import MAX_LEN_A, MAX_LEN_B

NEG = -1.0e9  # transformers' "impossible" score


def translate(model, sp, sources: list[str], num_beams: int) -> list[str]:
    """Raw translations of raw `sources` (one batch), with the sentencepiece processor `sp`: generate's beam search
    to fairseq's length limit (MAX_LEN_A * source length + MAX_LEN_B tokens, + the start token and </s>)."""
    from lib.hf_m2m100 import decode, encode
    input_ids, attention_mask = encode(sp, sources)
    out = generate(model, input_ids, attention_mask, num_beams=num_beams,
                   max_length=int(MAX_LEN_A * input_ids.shape[1]) + MAX_LEN_B + 2)
    return decode(sp, out)


def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_beams: int,
             max_length: int) -> torch.Tensor:
    """The best hypothesis of each source, as generate(..., num_beams, max_length) returns it for this model's
    generation config: (batch, length) token ids starting with the decoder start token, padded with <pad>."""
    config = model.generation_config
    eos, pad, start = config.eos_token_id, config.pad_token_id, config.decoder_start_token_id
    suppress = list(config.suppress_tokens or [])
    min_new, penalty = config.min_new_tokens or 0, config.length_penalty
    if config.early_stopping is not True or config.forced_eos_token_id not in (None, eos) or \
            config.no_repeat_ngram_size or config.repetition_penalty not in (None, 1.0) or config.forced_bos_token_id \
            or config.bad_words_ids or config.begin_suppress_tokens or config.min_length not in (None, 0):
        raise ValueError("lib.ort_generate follows generate only for the generation config lib/hf_m2m100.py writes "
                         "(early_stopping=True, suppressed tokens, min_new_tokens, a forced </s>)")
    batch, beams = input_ids.shape[0], num_beams
    encoded = model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    encoder_states = encoded.repeat_interleave(beams, dim=0)
    encoder_mask = attention_mask.repeat_interleave(beams, dim=0)

    running = torch.full((batch, beams, max_length), pad, dtype=torch.long)
    running[:, :, 0] = start
    finished = running.clone()
    running_scores = torch.zeros(batch, beams)
    running_scores[:, 1:] = NEG
    finished_scores = torch.full((batch, beams), NEG)
    slot_filled = torch.zeros(batch, beams, dtype=torch.bool)
    improvable = torch.ones(batch, 1, dtype=torch.bool)
    top_beams = torch.arange(2 * beams) < beams
    active = torch.arange(batch)      # the rows of the batch still searched, as indices into the outputs
    out = torch.full((batch, max_length), pad, dtype=torch.long)
    out_length = torch.ones(batch, dtype=torch.long)  # generated tokens of each result + the start token
    past, cur_len = None, 1
    while True:
        n = len(active)
        last = running[:, :, cur_len - 1].reshape(n * beams, 1)
        decoder = model.decoder if past is None else model.decoder_with_past
        step = decoder(input_ids=last, encoder_hidden_states=encoder_states, encoder_attention_mask=encoder_mask,
                       past_key_values=past, use_cache=True)
        past = step.past_key_values
        log_probs = torch.log_softmax(torch.as_tensor(step.logits)[:, -1, :].float(), dim=-1)
        vocab = log_probs.shape[-1]
        if suppress:
            log_probs[:, suppress] = -float("inf")
        if cur_len - 1 < min_new:
            log_probs[:, eos] = -float("inf")
        if cur_len == max_length - 1:
            log_probs = torch.full_like(log_probs, -float("inf"))
            log_probs[:, eos] = 0
        scores = (log_probs.view(n, beams, vocab) + running_scores[:, :, None]).view(n, beams * vocab)
        top_scores, top_indices = torch.topk(scores, 2 * beams)
        from_beam, tokens = top_indices // vocab, top_indices % vocab
        candidates = torch.take_along_dim(running, from_beam[:, :, None], dim=1)
        candidates[:, :, cur_len] = tokens
        ends = (tokens == eos) | (cur_len + 1 >= max_length)

        # the best `beams` candidates that go on
        going_on = top_scores + ends.float() * NEG
        keep = torch.topk(going_on, beams)[1]
        running = torch.take_along_dim(candidates, keep[:, :, None], dim=1)
        running_scores = torch.take_along_dim(going_on, keep, dim=1)
        kept_beam = torch.take_along_dim(from_beam, keep, dim=1)

        # finished hypotheses: only from the top `beams` candidates, while a slot can still take them
        just_ended = ends & top_beams[None, :]
        final = top_scores / (cur_len ** penalty)  # generated tokens, </s> counted
        final = final + (slot_filled.all(-1, keepdim=True)).float() * NEG + (~improvable).float() * NEG
        final = final + (~just_ended).float() * NEG
        merged = torch.topk(torch.cat([finished_scores, final], 1), beams)[1]
        finished = torch.take_along_dim(torch.cat([finished, candidates], 1), merged[:, :, None], dim=1)
        finished_scores = torch.take_along_dim(torch.cat([finished_scores, final], 1), merged, dim=1)
        slot_filled = torch.take_along_dim(torch.cat([slot_filled, just_ended], 1), merged, dim=1)

        cur_len += 1
        best_running = running_scores[:, :1] / ((cur_len - 1) ** penalty)
        worst_finished = torch.where(slot_filled, finished_scores.min(1, keepdim=True)[0], torch.tensor(NEG))
        improvable = improvable & (best_running > worst_finished).any(-1, keepdim=True)

        done = slot_filled.all(-1) | ~improvable[:, 0]
        if cur_len >= max_length:  # every continuation hit the length limit: generate stops here
            done[:] = True
        if done.any():
            # a finished hypothesis ends at its </s> (or at the limit); the rest of its row is <pad>
            lengths = (finished[done, 0] != pad).sum(-1)
            out[active[done]] = finished[done, 0]
            out_length[active[done]] = lengths
            keep_rows = ~done
            if not keep_rows.any():
                break
            active = active[keep_rows]
            rows = keep_rows.repeat_interleave(beams)
            running, running_scores = running[keep_rows], running_scores[keep_rows]
            finished, finished_scores = finished[keep_rows], finished_scores[keep_rows]
            slot_filled, improvable, kept_beam = slot_filled[keep_rows], improvable[keep_rows], kept_beam[keep_rows]
            encoder_states, encoder_mask = encoder_states[rows], encoder_mask[rows]
            past = tuple(tuple(t[rows] for t in layer) for layer in past)
        # each kept beam continues from the decoder state of the beam it extends
        order = (kept_beam + torch.arange(len(active))[:, None] * beams).view(-1)
        past = tuple(tuple(t.index_select(0, order) for t in layer[:2]) + tuple(layer[2:]) for layer in past)
    return out[:, : int(out_length.max())]
