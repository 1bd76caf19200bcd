"""AA-UNet student: the teacher's layers and level shapes with attention inception (CBAM | ECA | SE)."""
import torch

from compress.checkpoint import apply_channel_plan
from compress.fold import fold_model
from compress.pruning.prune import PruneTarget, prune_model
from students import create_student
from students.aaunet_student import AttentionInception
from teachers import create_teacher


def test_teacher_weights_load_and_a_fresh_student_computes_the_teacher() -> None:
    """Everything but the attention is shared; fresh attention on both sides is the identity."""
    torch.manual_seed(0)
    teacher = create_teacher("aaunet", base_width=4).eval()
    student = create_student("aaunet_student", base_width=4).eval()
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert all(k.startswith("attention.") for k in missing)
    assert all(k.startswith(("attention.", "head1", "head2", "head3", "head4")) for k in unexpected)
    x = torch.rand(1, 4, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(student(x), teacher(x))
        t_feat, s_feat = teacher.level_features(x), student.level_features(x)
    assert {k: v.shape for k, v in t_feat.items()} == {k: v.shape for k, v in s_feat.items()}
    assert set(student.feature_taps) == set(t_feat)  # the soft labels line up by module path


def test_attention_inception_uses_all_three_branches() -> None:
    torch.manual_seed(0)
    block = AttentionInception(32).eval()
    torch.nn.init.normal_(block.fuse.weight, std=0.1)
    x = torch.rand(2, 32, 6, 6)
    with torch.no_grad():
        base = block(x)
        for branch in ("cbam", "eca", "se"):  # silencing any branch changes the output
            original = getattr(block, branch)
            setattr(block, branch, torch.nn.Identity())
            assert not torch.allclose(block(x), base)
            setattr(block, branch, original)


def test_fold_removes_cbam_batchnorm_exactly() -> None:
    torch.manual_seed(0)
    student = create_student("aaunet_student", base_width=4).eval()
    torch.nn.init.normal_(student.attention.fuse.weight, std=0.1)
    bn = student.attention.cbam.spatial.conv.bn
    with torch.no_grad():
        bn.running_mean.fill_(0.3)
        bn.running_var.fill_(2.0)
    folded, report = fold_model(student)
    assert report["batchnorm_left"] == 0
    x = torch.rand(1, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), student(x), atol=1e-5, rtol=1e-5)


def test_pruning_keeps_the_attention_consistent_and_rebuilds() -> None:
    torch.manual_seed(0)
    student = create_student("aaunet_student", base_width=8)
    torch.nn.init.normal_(student.attention.fuse.weight, std=0.1)
    plan = prune_model(student, torch.rand(1, 4, 32, 32), PruneTarget(ratio=0.3))
    width = student.attention.coupled_channels
    assert width == plan["bottleneck4.1.0"] < 128
    assert student.attention.fuse.in_channels == 3 * width
    assert student.attention.se.fc1.in_channels == student.attention.cbam.channel.fc2.out_channels == width
    x = torch.rand(1, 4, 32, 32)
    student.eval()
    rebuilt = apply_channel_plan(create_student("aaunet_student", base_width=8), plan)
    rebuilt.load_state_dict(student.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), student(x))
