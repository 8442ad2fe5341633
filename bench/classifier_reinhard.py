"""One-off (issue #22): Reinhard stain normalisation of each crop at inference, per domain. Run: PYTHONPATH=. python bench/classifier_reinhard.py"""
import numpy as np, cv2, sys
from pathlib import Path
from bench.classifier_domains import field_rows, NORMAL5
from bench.common import wbcseg_cells
from bccdet.adapters.classifier import load_classifier
from bccdet.adapters.classifier.data import _read_split
from bccdet.io import read_image
from bccdet.data import data_root
root=data_root(required=True)
clf=load_classifier(None)
def lab(c): return cv2.cvtColor(c, cv2.COLOR_RGB2LAB).reshape(-1,3).astype(np.float32)
tr=_read_split(Path('data/pbc-cls'),'train')[::40]
st=np.array([[lab(clf.crop_single(read_image(p))).mean(0), lab(clf.crop_single(read_image(p))).std(0)] for p,_ in tr])
ref_m, ref_s = st[:,0].mean(0), st[:,1].mean(0)
print('ref', ref_m, ref_s, len(tr))
def norm(c):
    l=lab(c); m,s=l.mean(0),l.std(0)+1e-3
    o=(l-m)/s*ref_s+ref_m
    return cv2.cvtColor(np.clip(o,0,255).astype(np.uint8).reshape(c.shape), cv2.COLOR_LAB2RGB)
def score(crops, truth, tag):
    for nm,f in (('plain',lambda c:c),('reinhard',norm)):
        cs=[f(c) for c in crops]
        probs,labels,_,_,unf=clf.type_crops(cs,None)
        t=np.array(truth); p=np.array(labels)
        keep=[clf.labels.index(n) for n in NORMAL5]
        p5=np.array([NORMAL5[i] for i in probs[:,keep].argmax(1)])
        print(f'{tag:<12}{nm:<10} acc {np.mean(t==p):.3f} acc5 {np.mean(t==p5):.3f} unf {np.mean(unf):.2f}')
rows=[r for r in field_rows() if r['label'] in NORMAL5]
for src in ('txl-raabin','txl-256','bccd'):
    rs=[r for r in rows if r['source']==src]
    crops=[clf.crop(read_image(root/r['image']), [float(r[k]) for k in ('x1','y1','x2','y2')]) for r in rs]
    score(crops,[r['label'] for r in rs],src)
f,n=wbcseg_cells()
score([clf.crop_single(read_image(x)) for x in f], n, 'wbc-seg')
te=_read_split(Path('data/pbc-cls'),'test')[::4]
score([clf.crop_single(read_image(p)) for p,_ in te],[l for _,l in te],'pbc-test/4')
