"""The replica's pretrained encoder against the TF encoder's output on 4 dev windows."""
import numpy as np
import torch

import replica as R

m = R.Span()
R.load_pretrained(m)
m.to(R.DEV).eval()
d, ref = R.load("dev.npz"), R.load("ref.npz")["seq"]
inputs = (torch.from_numpy(d[k][:4].astype(np.int64)).to(R.DEV) for k in ("ids", "types", "mask"))
with torch.no_grad():
    x = m.encode(*inputs, p=0.0).cpu().numpy()
real = d["mask"][:4].astype(bool)
diff = np.abs(x - ref)[real]
print("sanity: max abs diff vs TF native encoder on real tokens", diff.max(), "mean", diff.mean(),
      "ref scale", np.abs(ref[real]).mean(), flush=True)
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", torch.__version__)
