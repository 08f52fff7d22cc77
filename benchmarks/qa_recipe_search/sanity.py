"""The replica's pretrained encoder against the TF encoder's output on 4 dev windows."""
import numpy as np, torch, torch.nn.functional as F, time
import replica as R
m = R.Span(); R.load_pretrained(m); m.to(R.DEV).eval()
d = R.load("dev.npz"); ref = np.load(R.os.path.join(R.D, "ref.npz"))["seq"]
ids = torch.from_numpy(d["ids"][:4].astype(np.int64)).to(R.DEV)
ty = torch.from_numpy(d["types"][:4].astype(np.int64)).to(R.DEV)
mk = torch.from_numpy(d["mask"][:4].astype(np.int64)).to(R.DEV)
with torch.no_grad():
    t = ids.shape[1]
    x = m.word(ids) + m.pos.weight[:t][None] + m.ttype(ty)
    x = m.eln(x)
    bias = (1.0 - mk[:, None, None, :].float()) * -1e4
    for layer in m.layers:
        x = layer(x, bias, 0.0)
x = x.cpu().numpy()
real = d["mask"][:4].astype(bool)
diff = np.abs(x - ref)[real]
print("sanity: max abs diff vs TF native encoder on real tokens", diff.max(), "mean", diff.mean(),
      "ref scale", np.abs(ref[real]).mean(), flush=True)
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", torch.__version__)
