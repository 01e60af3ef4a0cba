"""An MLflow pyfunc model that serves a transformers checkpoint folder (logged as the model's artifact).

Logged with MLflow's "models from code": this file is copied into the logged model, so loading it needs only
mlflow, torch and transformers, not this project. ``model_config={"kind": "policy"}`` generates text for each
prompt; ``{"kind": "reward"}`` scores each text with the sequence classifier.

Why not ``mlflow.transformers.log_model``: from a checkpoint path it breaks on transformers 5 (the pipeline
registry now names classes as strings), and from loaded objects it re-saves the weights and infers requirements
through torchvision, which is not installed.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


class CheckpointModel(PythonModel):
    def load_context(self, context) -> None:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        path = context.artifacts["checkpoint"]
        config = context.model_config or {}
        self.kind = config.get("kind", "policy")
        self.max_new_tokens = int(config.get("max_new_tokens", 64))
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        loader = AutoModelForSequenceClassification if self.kind == "reward" else AutoModelForCausalLM
        self.model = loader.from_pretrained(path).eval()

    def _encode(self, text: str) -> list[int]:
        if self.tokenizer.chat_template and self.kind == "policy":
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
            return self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
        return self.tokenizer(text)["input_ids"]

    def predict(self, context, model_input: list[str], params: dict | None = None) -> list[str]:
        import torch

        outputs = []
        with torch.no_grad():
            for text in model_input:
                ids = torch.tensor([self._encode(text)])
                if self.kind == "reward":
                    outputs.append(str(float(self.model(input_ids=ids).logits[0, 0])))
                    continue
                out = self.model.generate(
                    ids,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
                outputs.append(
                    self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
                )
        return outputs


mlflow.models.set_model(CheckpointModel())
