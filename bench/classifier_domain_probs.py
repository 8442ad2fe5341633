"""One-off (issue #22): per-domain calibrated probabilities and unfamiliar flags -> npz. Run: PYTHONPATH=. python bench/classifier_domain_probs.py default OUT.npz"""
import sys, numpy as np
from pathlib import Path
from bench.classifier_domains import field_rows, type_field_cells, type_images, converted_split, NORMAL5
from bench.common import wbcseg_cells, REPO
from bccdet.adapters.classifier import load_classifier
from bccdet.data import data_root
root=data_root(required=True)
w, out = sys.argv[1], sys.argv[2]
clf=load_classifier(None if w=='default' else w)
D={}
typed=[r for r in type_field_cells(clf, field_rows(), root) if r['label'] in NORMAL5]
for src in ('txl-raabin','txl-256','bccd'):
    rs=[r for r in typed if r['source']==src]
    D[src+'_p']=np.stack([r['probs'] for r in rs]); D[src+'_y']=np.array([r['label'] for r in rs]); D[src+'_sure']=np.array([r['certainty']=='sure' for r in rs]); D[src+'_u']=np.array([r['unfamiliar'] for r in rs])
f,n=wbcseg_cells(); res=type_images(clf,f); D['wbcseg_p']=np.stack([x[2] for x in res]); D['wbcseg_y']=np.array(n); D['wbcseg_u']=np.array([x[1] for x in res])
for name, folder, splits in (("pbc", "pbc-cls", ("test",)), ("deepapl", "deepapl-cls", ("val", "test"))):
    files, labs = converted_split(REPO/'data'/folder, splits)
    res=type_images(clf, files); D[name+'_p']=np.stack([x[2] for x in res]); D[name+'_y']=np.array(labs); D[name+'_u']=np.array([x[1] for x in res])
    D[name+'_files']=np.array([str(x) for x in files])
D['labels']=np.array(clf.labels)
np.savez(out, **D)
print('ok', {k:v.shape for k,v in D.items() if k.endswith('_p')})
