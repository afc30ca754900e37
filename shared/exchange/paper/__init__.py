"""The paper venue's client side: its protocol and the `PaperAccount` adapter. The venue itself
(the engine and its test controls) is `services/paper`."""

from shared.exchange.paper.account import CAPABILITIES as CAPABILITIES
from shared.exchange.paper.account import PaperAccount as PaperAccount
from shared.exchange.paper.protocol import Amend as Amend
from shared.exchange.paper.protocol import Call as Call
from shared.exchange.paper.protocol import Cancel as Cancel
from shared.exchange.paper.protocol import Failure as Failure
from shared.exchange.paper.protocol import FillPart as FillPart
from shared.exchange.paper.protocol import Fills as Fills
from shared.exchange.paper.protocol import Find as Find
from shared.exchange.paper.protocol import Fund as Fund
from shared.exchange.paper.protocol import InjectFault as InjectFault
from shared.exchange.paper.protocol import Ok as Ok
from shared.exchange.paper.protocol import OpenOrders as OpenOrders
from shared.exchange.paper.protocol import Orders as Orders
from shared.exchange.paper.protocol import PaperFaultKind as PaperFaultKind
from shared.exchange.paper.protocol import PaperOrder as PaperOrder
from shared.exchange.paper.protocol import Place as Place
from shared.exchange.paper.protocol import PlaceResting as PlaceResting
from shared.exchange.paper.protocol import Position as Position
from shared.exchange.paper.protocol import Price as Price
from shared.exchange.paper.protocol import Reply as Reply
from shared.exchange.paper.protocol import Rules as Rules
from shared.exchange.paper.protocol import SetPrice as SetPrice
from shared.exchange.paper.protocol import Snapshot as Snapshot
from shared.exchange.paper.protocol import Submit as Submit
from shared.exchange.paper.protocol import Transport as Transport
from shared.exchange.paper.protocol import nats_transport as nats_transport
