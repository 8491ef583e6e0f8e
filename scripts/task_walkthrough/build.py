"""Build the walk-through's user models (small, real, trained here) in /tmp/walk."""
import sys, textwrap
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.test_tasks import make_model, TWO_OUTPUT_MODEL, TWO_OUTPUT_META
from tests.test_tasks_builtin import BIGRAM, LM_META
from tests.test_training_tasks import ENCODER, ENCODER_META, REGRESSOR, REGRESSOR_META, pair_arrays, regression_arrays

root = Path("/tmp/walk"); root.mkdir(exist_ok=True)
torch.manual_seed(0)

def trained(folder, code, fit):
    ns = {}; exec(compile(code, "m", "exec"), ns)
    net = ns["build_model"](); net.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
    fit(net); torch.save(net.state_dict(), folder / "weights.pt")

# regression: fit to train.npz
reg = make_model(root / "regressor", REGRESSOR, REGRESSOR_META)
regression_arrays(reg / "train.npz", 512, seed=1); regression_arrays(reg / "val.npz", 128, seed=2)
def fit_reg(net):
    d = np.load(reg / "train.npz"); x, y = torch.from_numpy(d["x"]), torch.from_numpy(d["value"])
    opt = torch.optim.Adam(net.parameters(), 0.01)
    for _ in range(400):
        opt.zero_grad(); torch.nn.functional.mse_loss(net(x), y).backward(); opt.step()
trained(reg, REGRESSOR, fit_reg)

# language model: next token = this + 1 (mod 24), with noise
lm = make_model(root / "bigram", BIGRAM, LM_META)
rng = np.random.default_rng(0)
def windows(n):
    w = ((rng.integers(0, 24, (n, 1)) + np.arange(12)) % 24)
    flip = rng.random(w.shape) < 0.1
    return np.where(flip, rng.integers(0, 24, w.shape), w).astype(np.int32)
np.savez(lm / "train.npz", input_ids=windows(256)); np.savez(lm / "val.npz", input_ids=windows(64))
def fit_lm(net):
    ids = torch.from_numpy(np.load(lm / "train.npz")["input_ids"]).long()
    opt = torch.optim.Adam(net.parameters(), 0.05)
    for _ in range(200):
        opt.zero_grad(); out = net(ids.to(torch.int32))
        torch.nn.functional.cross_entropy(out[:, :-1].reshape(-1, 24), ids[:, 1:].reshape(-1)).backward(); opt.step()
trained(lm, BIGRAM, fit_lm)

# tensors: any model, two outputs, no targets
th = make_model(root / "two_heads", TWO_OUTPUT_MODEL, TWO_OUTPUT_META)
np.savez(th / "val.npz", x=np.random.default_rng(4).normal(size=(64, 6)).astype(np.float32))

# embedding: two int32 inputs, query/key pairs
enc = make_model(root / "encoder", ENCODER, ENCODER_META)
pair_arrays(enc / "train.npz", n=256, seed=0); pair_arrays(enc / "val.npz", n=128, seed=5)
(root / "mean_rank.py").write_text(textwrap.dedent('''
    import numpy as np
    DIRECTIONS = {"mean_rank": "lower"}
    def metric(outputs, targets):
        """Mean rank of each query's true key among all keys, by cosine similarity."""
        e = outputs["embedding"] / np.linalg.norm(outputs["embedding"], axis=1, keepdims=True)
        pair = targets["pair"]; queries = np.flatnonzero(pair >= 0); keys = pair[queries]
        sims = e[queries] @ e[keys].T
        true = sims[np.arange(len(queries)), np.arange(len(queries))]
        return {"mean_rank": float((sims > true[:, None]).sum(1).mean() + 1)}
'''))
print("built", [p.name for p in root.iterdir()])
