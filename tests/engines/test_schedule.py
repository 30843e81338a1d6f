import pytest

from monai_protoshare.engines import Stage, TrainingSchedule


def test_paper_schedule_counts():
    s = TrainingSchedule()
    assert s.total_epochs == 50 + 100 + 10 * 10
    stages = [s.stage(e) for e in range(1, s.total_epochs + 1)]
    assert stages.count(Stage.WARMUP) == 50 and stages.count(Stage.LATENT) == 100
    assert stages.count(Stage.CLASSIFIER) == 100
    pushes = [e for e in range(1, s.total_epochs + 1) if s.push_after(e)]
    assert pushes == [50 + 10 * b + 10 + 10 * (b) for b in range(10)]
    assert all(s.stage(e) == Stage.LATENT and s.stage(e + 1) == Stage.CLASSIFIER for e in pushes)
    assert s.stage(s.total_epochs) == Stage.CLASSIFIER  # the final model follows the last push + stage 3


def test_trailing_short_block_still_pushes():
    s = TrainingSchedule(warmup_epochs=0, latent_epochs=5, push_interval=2, classifier_epochs=1)
    assert [s.stage(e).value[0] for e in range(1, s.total_epochs + 1)] == list("llcllclc")
    assert [e for e in range(1, 9) if s.push_after(e)] == [2, 5, 7]
    assert s.latent_epoch_index(8) == 5


def test_bad_schedule_values_raise():
    with pytest.raises(ValueError, match="push_interval"):
        TrainingSchedule(push_interval=0)
    with pytest.raises(ValueError, match="empty"):
        TrainingSchedule(warmup_epochs=0, latent_epochs=0)
    with pytest.raises(ValueError, match="within 1..250"):
        TrainingSchedule().stage(251)
