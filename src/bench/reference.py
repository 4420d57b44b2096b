# PyTorch eager reference for `ebmlab bench`: the same work, written the way the seed spec
# writes it (SequenceEBM over concatenated inputs, ULA with autograd.grad at every step,
# InfoNCE + gradient penalty with create_graph, torch.optim.Adam; DFO with 16,384 samples).
# Prints one JSON line per figure. Arguments: JSON object with the settings.
import json, statistics, sys, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
device = torch.device(cfg.get("device", "cpu"))


class MLPResidualBlock(nn.Module):
    def __init__(self, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(hidden_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x):
        out = self.fc1(F.relu(x))
        out = self.fc2(F.relu(out))
        return out + x


class SequenceEBM(nn.Module):
    def __init__(self, obs_dim, action_dim, obs_seq_len, hidden_dim, blocks):
        super().__init__()
        self.projection = nn.Linear(obs_seq_len * obs_dim + action_dim, hidden_dim)
        self.blocks = nn.ModuleList([MLPResidualBlock(hidden_dim) for _ in range(blocks)])
        self.energy_projection = nn.Linear(hidden_dim, 1)

    def forward(self, obs_seq, action):
        B, N, _ = action.shape
        obs_flat = obs_seq.reshape(B, -1).unsqueeze(1).expand(B, N, -1)
        x = torch.cat([obs_flat, action], dim=-1).reshape(B * N, -1)
        x = self.projection(x)
        for block in self.blocks:
            x = block(x)
        return self.energy_projection(x).reshape(B, N)


def ula(model, obs, n, steps, act_dim):
    B = obs.shape[0]
    a = torch.rand(B, n, act_dim, device=device) * 2 - 1
    for i in range(steps):
        s = (0.1 - 1e-5) * (1 - i / max(steps - 1, 1)) ** 2 + 1e-5
        a = a.detach().requires_grad_(True)
        e = model(obs, a)
        g = torch.autograd.grad(e.sum(), a)[0]
        delta = s * (0.5 * g + torch.randn_like(a))
        delta = delta.clamp(-0.1, 0.1)
        a = (a - delta).clamp(-1, 1)
    return a.detach()


def train_step(model, opt, data_obs, data_act, batch, negatives, steps):
    idx = torch.randint(0, data_obs.shape[0], (batch,), device=device)
    obs, act = data_obs[idx], data_act[idx]
    neg = ula(model, obs, negatives, steps, act.shape[-1])
    e_pos = model(obs, act.unsqueeze(1))
    e_neg = model(obs, neg)
    energies = torch.cat([e_neg, e_pos], dim=1)
    labels = torch.full((batch,), negatives, dtype=torch.long, device=device)
    loss_nce = F.cross_entropy(-energies, labels)
    comb = torch.cat([neg, act.unsqueeze(1)], dim=1)
    B, N, A = comb.shape
    a_flat = comb.reshape(-1, A).detach().requires_grad_(True)
    o_flat = obs.unsqueeze(1).expand(B, N, -1, -1).reshape(B * N, obs.shape[1], obs.shape[2])
    e = model(o_flat, a_flat.unsqueeze(1)).squeeze(-1)
    g = torch.autograd.grad(e, a_flat, grad_outputs=torch.ones_like(e), create_graph=True)[0]
    gn = torch.clamp(torch.norm(g, p=float("inf"), dim=1) - 1.0, min=0.0)
    loss = loss_nce + (gn ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def dfo(model, obs, samples, iters):
    with torch.no_grad():
        B = obs.shape[0]
        a = torch.rand(B, samples, 2, device=device) * 2 - 1
        noise = 0.33
        for _ in range(iters):
            e = model(obs, a).float()
            p = F.softmax(-e, dim=-1)
            idx = torch.multinomial(p, samples, replacement=True)
            a = torch.gather(a, 1, idx.unsqueeze(-1).expand(B, samples, 2))
            a = (a + torch.randn_like(a) * noise).clamp(-1, 1)
            noise *= 0.5
        e = model(obs, a)
        best = e.argmin(dim=-1)
        return a[torch.arange(B, device=device), best]


def timed(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def emit(name, config, times):
    print(json.dumps({
        "bench": name, "impl": "pytorch-eager", "device": str(device),
        "threads": torch.get_num_threads(), "config": config, "repeats": len(times),
        "median_ms": statistics.median(times), "min_ms": min(times),
    }), flush=True)


t = cfg["train"]
model = SequenceEBM(t["obs_dim"], t["action_dim"], 2, t["hidden"], t["blocks"]).to(device)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
data_obs = torch.randn(20000, 2, t["obs_dim"], device=device)
data_act = torch.rand(20000, t["action_dim"], device=device) * 2 - 1
if "train_step" in cfg["only"]:
    times = timed(lambda: train_step(model, opt, data_obs, data_act, t["batch_size"],
                                     t["negatives"], t["langevin_steps"]),
                  cfg["warmup"], cfg["repeats"])
    emit("train_step", t, times)
def precision_context(precision):
    """fp32, TF32 products, or bf16 autocast (products in bf16, softmax in fp32)."""
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


if "dfo" in cfg["only"]:
    for precision in cfg["precisions"]:
        for batch in cfg["dfo"]["batches"]:
            obs = torch.randn(batch, 2, t["obs_dim"], device=device)

            def dfo_call():
                with precision_context(precision):
                    dfo(model, obs, cfg["dfo"]["samples"], cfg["dfo"]["iters"])

            times = timed(dfo_call, cfg["warmup"], cfg["repeats"])
            emit("dfo", {"batch": batch, "samples": cfg["dfo"]["samples"],
                         "iters": cfg["dfo"]["iters"], "hidden": t["hidden"],
                         "precision": precision}, times)


def particle_eval(model, episodes, samples, iters, n_steps, n_dim):
    """Batched rollouts of the particle task (IBC dynamics, float32 numpy), DFO each step."""
    rng = np.random.default_rng(0)
    p = rng.random((episodes, n_dim), dtype=np.float32)
    g1 = rng.random((episodes, n_dim), dtype=np.float32)
    g2 = rng.random((episodes, n_dim), dtype=np.float32)
    v = np.zeros_like(p)
    mean, std = np.float32(0.5), np.float32(0.3)
    min1 = np.full(episodes, np.inf, dtype=np.float32)
    min2 = np.full(episodes, np.inf, dtype=np.float32)
    prev = None
    for _ in range(n_steps):
        obs = np.concatenate([p, v, g1, g2], axis=1)
        window = np.stack([obs if prev is None else prev, obs], axis=1)
        prev = obs
        x = torch.from_numpy((window - mean) / std).to(device)
        a = dfo(model, x, samples, iters).cpu().numpy()
        a = ((a + 1.0) / 2.0).astype(np.float32)
        for _ in range(10):
            u = np.float32(10.0) * (a - p) - np.float32(5.0) * v
            p, v = p + v * np.float32(0.005), v + u * np.float32(0.005)
        min1 = np.minimum(min1, np.linalg.norm(p - g1, axis=1))
        min2 = np.minimum(min2, np.linalg.norm(p - g2, axis=1))
    final2 = np.linalg.norm(p - g2, axis=1)
    return float(np.mean((min1 < 0.05) & (min2 < 0.05) & (final2 < 0.05)))


if "eval" in cfg["only"]:
    e = cfg["eval"]
    eval_model = SequenceEBM(4 * e["n_dim"], e["n_dim"], 2, e["hidden"], 1).to(device)
    for precision in cfg["precisions"]:
        def eval_call():
            with precision_context(precision):
                particle_eval(eval_model, e["episodes"], e["samples"], e["iters"],
                              e["n_steps"], e["n_dim"])

        times = timed(eval_call, min(cfg["warmup"], 1), cfg["repeats"])
        emit("eval", dict(e, precision=precision), times)


class PackedEBM:
    """K SequenceEBMs of one shape as stacked weights [K, out, in] and batched products:
    what a PyTorch user writes to train many small networks at once."""

    def __init__(self, k, in_dim, obs_in, hidden, blocks):
        def linear(i, o):
            bound = 1.0 / i ** 0.5
            w = (torch.rand(k, o, i, device=device) * 2 - 1) * bound
            b = (torch.rand(k, o, device=device) * 2 - 1) * bound
            return [w.requires_grad_(), b.requires_grad_()]
        self.obs_in = obs_in
        self.proj = linear(in_dim, hidden)
        self.blocks = [(linear(hidden, hidden), linear(hidden, hidden)) for _ in range(blocks)]
        self.out = linear(hidden, 1)

    def params(self):
        ps = list(self.proj) + list(self.out)
        for fc1, fc2 in self.blocks:
            ps += list(fc1) + list(fc2)
        return ps

    @staticmethod
    def lin(x, wb):
        return torch.baddbmm(wb[1].unsqueeze(1), x, wb[0].transpose(1, 2))

    def energies(self, obs, act):
        # obs [K, B, S*D], act [K, B, N, A] -> [K, B, N]
        K, B, N, A = act.shape
        w, b = self.proj
        ctx = torch.baddbmm(b.unsqueeze(1), obs, w[:, :, :self.obs_in].transpose(1, 2))
        h = torch.bmm(act.reshape(K, B * N, A), w[:, :, self.obs_in:].transpose(1, 2))
        h = (h.view(K, B, N, -1) + ctx.unsqueeze(2)).view(K, B * N, -1)
        for fc1, fc2 in self.blocks:
            h = h + self.lin(F.relu(self.lin(F.relu(h), fc1)), fc2)
        return self.lin(h, self.out).view(K, B, N)


def packed_step(model, opt, data_obs, data_act, k, batch, negatives, steps, dtype):
    idx = torch.randint(0, data_obs.shape[0], (k, batch), device=device)
    obs = data_obs[idx].reshape(k, batch, -1)
    act = data_act[idx]
    A = act.shape[-1]
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        a = torch.rand(k, batch, negatives, A, device=device) * 2 - 1
        for i in range(steps):
            s = (0.1 - 1e-5) * (1 - i / max(steps - 1, 1)) ** 2 + 1e-5
            a = a.detach().requires_grad_(True)
            g = torch.autograd.grad(model.energies(obs, a).float().sum(), a)[0]
            delta = (s * (0.5 * g + torch.randn_like(a))).clamp(-0.1, 0.1)
            a = (a - delta).clamp(-1, 1)
        cand = torch.cat([a.detach(), act.unsqueeze(2)], 2).requires_grad_(True)
        e = model.energies(obs, cand).float()
        nce = -F.log_softmax(-e, dim=-1)[..., -1].mean(1)
        g = torch.autograd.grad(e.sum(), cand, create_graph=True)[0]
        gp = torch.clamp(g.abs().amax(-1) - 1.0, min=0.0).pow(2).mean((1, 2))
        loss = (nce + gp).sum()
    opt.zero_grad(set_to_none=False)
    loss.backward()
    opt.step()
    return loss


def packed_bench(k, precision, graphs):
    """One figure: K packed trials in `precision`, optionally captured as a CUDA graph."""
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    dtype = torch.bfloat16 if precision == "bf16" else None
    model = PackedEBM(k, 2 * t["obs_dim"] + t["action_dim"], 2 * t["obs_dim"], t["hidden"],
                      t["blocks"])
    opt = torch.optim.Adam(model.params(), lr=1e-3, capturable=graphs)
    args = (model, opt, data_obs, data_act, k, t["batch_size"], t["negatives"],
            t["langevin_steps"], dtype)
    if graphs:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                packed_step(*args)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            packed_step(*args)
        fn = graph.replay
    else:
        fn = lambda: packed_step(*args)
    times = timed(fn, cfg["warmup"], cfg["repeats"])
    median = statistics.median(times)
    print(json.dumps({
        "bench": "packed_train",
        "impl": "pytorch-packed" + ("-cuda-graph" if graphs else ""),
        "device": str(device), "threads": torch.get_num_threads(),
        "config": {"members": k, "precision": precision, "hidden": t["hidden"],
                   "batch_size": t["batch_size"], "negatives": t["negatives"],
                   "langevin_steps": t["langevin_steps"]},
        "repeats": len(times), "median_ms": median, "min_ms": min(times),
        "per_second": k * 1000.0 / median,
    }), flush=True)


if "packed_train" in cfg["only"]:
    for precision in cfg["precisions"]:
        for k in cfg["packed"]["sizes"]:
            packed_bench(k, precision, False)
            if device.type == "cuda":
                try:
                    packed_bench(k, precision, True)
                except Exception as e:  # a capture PyTorch refuses is reported, not fatal
                    print(f"no CUDA graph for K={k} {precision}: {e}", file=sys.stderr)
