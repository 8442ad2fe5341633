"""One-off (issue #22): sweep of the abnormal-label majority rule over the npz of classifier_domain_probs.py."""
import sys, numpy as np
from bccdet.vocab import ABNORMAL_LABELS
D=np.load(sys.argv[1]); L=list(D['labels'])
A=[L.index(a) for a in ABNORMAL_LABELS]; N=[i for i in range(len(L)) if i not in A]
def rule(p, tau, u=None):
    top=p.argmax(1); pred=top.copy()
    m=np.isin(top,A) & (p.max(1)<tau)
    if u is not None: m &= u
    pred[m]=np.array(N)[p[m][:,N].argmax(1)]
    return np.array(L)[pred]
doms=('txl-raabin','txl-256','bccd','wbcseg','pbc','deepapl')
for var in ('all','unfamiliar'):
    print(var)
    print(f"{'tau':>5}" + ''.join(f'{d:>12}' for d in doms) + '   blastR  blastP')
    for tau in (0,0.5,0.6,0.7,0.8,1.01):
        s=f'{tau:>5}'
        for d in doms:
            s+=f"{np.mean(rule(D[d+'_p'],tau, D[d+'_u'] if var=='unfamiliar' else None)==D[d+'_y']):>12.3f}"
        pr=rule(D['deepapl_p'],tau, D['deepapl_u'] if var=='unfamiliar' else None); y=D['deepapl_y']
        tp=np.sum((pr=='blast')&(y=='blast')); s+=f"   {tp/np.sum(y=='blast'):.3f}  {tp/max(1,np.sum(pr=='blast')):.3f}"
        print(s)
