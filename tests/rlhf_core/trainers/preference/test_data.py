import pytest
from datasets import Dataset

from rlhf_core.models.loading import load_tokenizer
from rlhf_core.trainers.preference.data import prepare_preference_dataset
from rlhf_core.trainers.preference.kto_data import prepare_kto_dataset


@pytest.mark.parametrize("prepare", [prepare_preference_dataset, prepare_kto_dataset])
def test_none_and_dicts_of_splits_are_prepared_split_by_split(prepare):
    tokenizer = load_tokenizer("rlhf-tiny")
    pairs = Dataset.from_dict({"prompt": ["Say hi:", "Count:"], "chosen": [" hi", " one two"],
                               "rejected": [" no", " three"]})  # fmt: skip
    assert prepare(None, tokenizer, max_length=64) is None
    splits = prepare({"a": pairs, "b": pairs.select([0])}, tokenizer, max_length=64, what="eval")
    assert sorted(splits) == ["a", "b"]
    assert splits["a"][:1] == splits["b"][:1]  # each split on its own, the same rows tokenised alike
    assert len(splits["a"]) == 2 * len(splits["b"])
    # a split is named in messages by its key
    with pytest.raises(ValueError, match=r"The eval\[b\] dataset is not tokenised and no tokenizer"):
        prepare({"b": pairs}, None, max_length=64, what="eval")
